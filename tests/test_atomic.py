"""atomic.py: outputs written whole or not at all, each through a temporary file of its own."""

import os
import threading

import pytest

from mbemlib import atomic


def test_atomic_write_gives_the_mode_open_would(tmp_path):
    """Outputs are shared (results folders, posterior CSVs): not mkstemp's owner-only 0600."""
    path = tmp_path / "out.csv"
    atomic.atomic_write(str(path), b"a,b\n")
    assert path.read_bytes() == b"a,b\n"
    assert path.stat().st_mode & 0o777 == 0o666 & ~atomic.UMASK
    assert os.listdir(tmp_path) == ["out.csv"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic.replacing(str(path)) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.pt"]


def test_two_writers_of_one_file_never_share_a_temporary(tmp_path):
    """Two runs saving the same model at once: each writes its own temporary file, the later
    rename wins whole, and neither fails (with one fixed '.part' name the second rename found
    none: FileNotFoundError)."""
    path, start, errors = str(tmp_path / "mbem-seed0-r1.pt"), threading.Barrier(8), []

    def write(i):
        start.wait()
        try:
            for _ in range(50):
                atomic.atomic_write(path, bytes([i]) * 10_000)
        except OSError as err:
            errors.append(err)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = open(path, "rb").read()
    assert not errors and len(data) == 10_000 and len(set(data)) == 1
    assert os.listdir(tmp_path) == ["mbem-seed0-r1.pt"]
