"""CIFAR-10N read from its published files (the .pt with an unpickler that allows numpy arrays
only), its annotations CSV, and the check of whether its worker ids carry a quality."""

import csv
import io
import os
import pickle
import zipfile

import numpy as np
import pytest

import cifar10n
from conftest import run_script, shared_path
from mbemlib.cli import InputError


@pytest.fixture(scope="module")
def cifar10n_files():
    return shared_path("crowd", "cifar10n")


def test_cifar10n_as_published(cifar10n_files):
    labels = cifar10n.read_labels(os.path.join(cifar10n_files, "CIFAR-10_human.pt"))
    workers, batches = cifar10n.read_workers(os.path.join(cifar10n_files, "side_info_cifar10N.csv"))
    table = cifar10n.annotations(labels, workers)
    assert len(table) == 150000 and table["item"].nunique() == 50000 and table["worker"].nunique() == 747
    agreement = {c: (labels[c] == labels["clean_label"]).mean() for c in labels if c != "clean_label"}
    # the shared README's figures
    for column, expected in (("random_label1", 0.8277), ("random_label2", 0.8188), ("random_label3", 0.8236),
                             ("aggre_label", 0.9099), ("worse_label", 0.5979)):
        assert agreement[column] == pytest.approx(expected, abs=5e-5), column
    per_worker = np.bincount(workers.ravel())
    assert (per_worker.min(), int(np.median(per_worker)), per_worker.max()) == (10, 80, 3070)


def test_cifar10n_worker_effects_as_the_shared_readme_states(cifar10n_files):
    labels = cifar10n.read_labels(os.path.join(cifar10n_files, "CIFAR-10_human.pt"))
    workers, batches = cifar10n.read_workers(os.path.join(cifar10n_files, "side_info_cifar10N.csv"))
    assert np.array_equal(batches, np.arange(50000) // 10)  # rows a--a+9 in order
    right = np.stack([labels[c] == labels["clean_label"] for c in cifar10n.LABEL_COLUMNS], axis=1)
    effects = cifar10n.worker_effects(right, workers, batches)
    # the README: 345 workers with 100 labels or more, sd 0.024 against binomial 0.026
    assert effects["workers"] == 345
    assert round(effects["accuracy_sd"], 3) == 0.024 and round(effects["binomial_sd"], 3) == 0.026
    # our alternate-batch split (the README's split is not stated: it found -0.07)
    assert effects["split_half_correlation"] == pytest.approx(-0.104, abs=0.001)


@pytest.mark.parametrize("spread", [0.0, 0.4])
def test_worker_effects_find_quality_differences_only_where_they_exist(spread):
    rng = np.random.default_rng(0)
    batches = np.repeat(np.arange(600), 10)  # 6,000 images in batches of ten, three workers a batch
    workers = np.repeat(rng.integers(0, 40, size=(600, 3)), 10, axis=0)
    quality = 0.8 + spread * (rng.random(40) - 0.5)
    right = rng.random(workers.shape) < quality[workers]
    effects = cifar10n.worker_effects(right, workers, batches)
    assert effects["workers"] == 40
    if spread:
        assert effects["accuracy_sd"] > 3 * effects["binomial_sd"] and effects["split_half_correlation"] > 0.8
    else:
        assert effects["accuracy_sd"] < 1.5 * effects["binomial_sd"]
        assert abs(effects["split_half_correlation"]) < 0.4


@pytest.mark.slow
def test_cifar10n_command_both_item_spellings(cifar10n_files, tmp_path):
    for items, first in (("index", "0"), ("jpeg", "frog/0000.jpg")):
        out = tmp_path / f"{items}.csv"
        result = run_script("cifar10n.py", cifar10n_files, "--items", items, "--out", out)
        assert result.returncode == 0, result.stderr
        with open(out) as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 150000 and rows[0]["item"] == first and rows[0]["label"] == "frog"
        assert "345 workers with at least 100 labels, accuracy sd 0.024" in result.stderr


def fake_pt(path, payload, persistent=False):
    """A torch-style zip whose data.pkl is `payload` pickled (optionally with a persistent id)."""
    buffer = io.BytesIO()
    if persistent:
        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                return ("storage", "FloatStorage", "0", "cpu", 4) if isinstance(obj, bytearray) else None
        Pickler(buffer, protocol=2).dump(payload)
    else:
        pickle.dump(payload, buffer, protocol=2)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
    return path


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("payload, persistent, message", [
    ({"clean_label": Exploit()}, False, "refusing to unpickle posix.system"),
    ({"clean_label": bytearray(b"1234")}, True, "refusing a torch tensor"),
    ({"clean_label": np.zeros(3, dtype=np.int64)}, False, "no random_label1"),
    ([1, 2, 3], False, "expected a dict of arrays"),
])
def test_cifar10n_reader_refuses_anything_but_arrays(tmp_path, payload, persistent, message):
    path = fake_pt(tmp_path / "CIFAR-10_human.pt", payload, persistent)
    with pytest.raises(InputError, match=message):
        cifar10n.read_labels(str(path))


def test_cifar10n_reader_on_a_damaged_file(tmp_path):
    (tmp_path / "CIFAR-10_human.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InputError, match="cannot read"):
        cifar10n.read_labels(str(tmp_path / "CIFAR-10_human.pt"))
