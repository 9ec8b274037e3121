"""Hostile input for every reader: each case ends in a result or one clear error, never a
traceback and never a partial output file."""

import csv
import io
import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_script
from mbemlib import dataset, label_files
from mbemlib.cli import InputError

FIELD = st.one_of(
    st.text(max_size=12),  # anything, quotes, commas and newlines included
    st.sampled_from(["", "NaN", "nan", " NULL ", "None", "n/a", "1", "1.0", "-0", "1e400", "0x10", "inf"]),
    st.integers(min_value=-10**30, max_value=10**30).map(str),  # huge ids
    st.sampled_from(["cat", "dog", "ş", "a,b", 'say "x"', "line\nbreak"]),
)
HEADER = st.permutations(["item", "worker", "label"]).flatmap(
    lambda names: st.tuples(*[st.sampled_from([n, n.upper(), n.title(), f" {n} "]) for n in names]))


def read(data):
    """read_answers on these bytes: the result, or the InputError's message. Anything else fails."""
    with tempfile.NamedTemporaryFile(suffix=".csv", delete=False) as f:
        f.write(data)
    try:
        return label_files.read_answers(f.name)
    except InputError as err:
        assert str(err).strip()
        return str(err)
    finally:
        os.unlink(f.name)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes(data):
    read(data)


@pytest.mark.slow
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=HEADER, rows=st.lists(st.lists(FIELD, min_size=0, max_size=5), max_size=30),
       bom=st.booleans(), crlf=st.booleans(), extra_column=st.booleans())
def test_structured_csv(header, rows, bom, crlf, extra_column):
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n" if crlf else "\n")
    writer.writerow(list(header) + (["comment"] if extra_column else []))
    writer.writerows(rows)
    data = out.getvalue().encode()
    result = read((b"\xef\xbb\xbf" if bom else b"") + data)
    if not isinstance(result, str):
        ann, items, workers, classes = result
        assert len(ann.items) == len(ann.workers) == len(ann.labels) > 0
        assert ann.K == len(classes) >= 2 and ann.n == len(items) and ann.m == len(workers)
        assert ann.items.max() < ann.n and ann.labels.max() < ann.K


def test_bom_crlf_and_header_case_are_read():
    ann, items, workers, classes = read(b"\xef\xbb\xbfLabel,WORKER,Item\r\nx,a,1\r\ny,b,1\r\nx,a,2\r\n")
    assert items == ["1", "2"] and workers == ["a", "b"] and classes == ["x", "y"]


def test_tens_of_thousands_of_rows():
    rng = np.random.default_rng(0)
    n = 40000
    text = "item,worker,label\n" + "".join(f"i{i},w{w},{c}\n" for i, w, c in zip(
        range(n), rng.integers(0, 500, n), rng.choice(["cat", "dog", "fox"], n), strict=True))
    ann, items, workers, classes = read(text.encode())
    assert len(ann.items) == n and classes == ["cat", "dog", "fox"]


@pytest.mark.parametrize("data", [
    b"item,worker,label\n1,a,x\n1,b,y\n2,a,\"unterminated\n",
    b"\xff\xfe\x00i\x00t\x00e\x00m",
    b"item,worker,label\n" + b"1,a,x\n" * 3,
    b"item;worker;label\n1;a;x\n",
    b"item,worker,label\n1,a,x\n2,b,y\n3,c\n",
])
def test_cli_on_hostile_files_writes_nothing_partial(tmp_path, data):
    answers, out = tmp_path / "answers.csv", tmp_path / "out.csv"
    answers.write_bytes(data)
    result = run_script("aggregation.py", answers, "--out", out)
    assert "Traceback" not in result.stderr
    assert result.returncode in (0, 2)
    if result.returncode == 2:
        assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
    assert sorted(os.listdir(tmp_path)) == sorted(["answers.csv"] + ["out.csv"] * (result.returncode == 0))


# ----------------------------------------------------------------------------- class-folder images

def tree(root, sizes=None, skip=()):
    """A tiny class-folder tree of PNGs: train/ and test/ with classes a and b."""
    from PIL import Image

    for split in ("train", "test"):
        for c in ("a", "b"):
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(2):
                if (split, c) in skip:
                    continue
                size = (sizes or {}).get((split, c, i), 4)
                Image.fromarray(np.full((size, size, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    return root


def truncated(root):
    data = (root / "train" / "a" / "0.png").read_bytes()
    (root / "train" / "a" / "0.png").write_bytes(data[: len(data) // 2])


def not_an_image(root):
    (root / "test" / "b" / "notes.jpg").write_text("these are not pixels")


@pytest.mark.parametrize("damage, message", [
    (truncated, "train/a/0.png: not a readable image"),
    (not_an_image, "test/b/notes.jpg: not a readable image"),
    (lambda root: (root / "train" / "c").mkdir(), "class folders without images: train/c"),
    (lambda root: None, None),
])
def test_folder_loader_damage(tmp_path, damage, message):
    root = tree(tmp_path / "images")
    damage(root)
    if message is None:
        ds = dataset.load_folder(str(root), str(tmp_path / "cache"), progress=False)
        assert ds.train_names == ["a/0.png", "a/1.png", "b/0.png", "b/1.png"]
        return
    with pytest.raises(ValueError, match=message.replace("/", "/")):
        dataset.load_folder(str(root), str(tmp_path / "cache"), progress=False)


def test_folder_loader_mixed_sizes_and_missing_class(tmp_path):
    root = tree(tmp_path / "mixed", sizes={("train", "b", 1): 6})
    with pytest.raises(ValueError, match=r"several sizes \(.*b/1.png is 6x6"):
        dataset.load_folder(str(root), str(tmp_path / "cache"), progress=False)
    root = tree(tmp_path / "missing", skip={("test", "b")})
    (root / "test" / "b").rmdir()
    with pytest.raises(ValueError, match="no images in test/ for the classes b"):
        dataset.load_folder(str(root), str(tmp_path / "cache"), progress=False)


def test_corrupt_cache_is_rebuilt_not_trusted(tmp_path):
    root, cache = tree(tmp_path / "images"), tmp_path / "cache"
    first = dataset.load_folder(str(root), str(cache), progress=False)
    [cached] = [p for p in cache.iterdir() if p.suffix == ".npz"]
    cached.write_bytes(cached.read_bytes()[:100])  # a crash mid-copy, a full disk
    again = dataset.load_folder(str(root), str(cache), progress=False)
    assert np.array_equal(first.train_images, again.train_images) and cached.stat().st_size > 100


def test_mbem_on_a_damaged_tree_is_one_line(tmp_path):
    root = tree(tmp_path / "images")
    truncated(root)
    result = run_script("MBEM.py", "--preset", "smoke", "--backend", "torch", "--dataset", "folder", "--source", root,
                        "--data-dir", tmp_path / "cache", "--out", tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # beside progress bars
    assert len(errors) == 1 and "train/a/0.png: not a readable image" in errors[0]
