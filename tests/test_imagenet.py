"""The paper's ImageNet pipeline end to end on a generated class-folder tree of JPEGs: grouped
workers, ResNet-18 at a reduced resolution, streamed decoding, top-1 and top-5, every file."""

import json

import numpy as np
import pytest

from conftest import needs_mxnet, run_script
from mbemlib import imagenet

CLASSES, GROUP = 20, 10


def make_tree(root, train_per_class=8, val_per_class=4, seed=0):
    """JPEGs of several sizes whose class is a colour and a stripe direction: learnable, tiny."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c in range(CLASSES):
            folder = root / split / f"n{c:04d}"
            folder.mkdir(parents=True)
            for i in range(count):
                h, w = rng.integers(36, 60, 2)
                pixels = np.full((h, w, 3), rng.integers(0, 40, 3), dtype=np.uint8)
                pixels[..., c % 3] += np.uint8(100 + 7 * c)
                stripes = (np.arange(w)[None, :] if c < 10 else np.arange(h)[:, None]) // 4 % 2
                pixels = (pixels * (0.6 + 0.4 * stripes[..., None])).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("imagenet") / "tree")


def test_streamed_batches_are_repeatable_and_augmented(tree):
    ds = imagenet.load(str(tree), val_size=40, size=32, workers=2)
    assert len(ds.train_images) == 160 and ds.train_images.shape == (160, 3, 32, 32)
    assert len(ds.val_images) == 40 and len(ds.test_images) == 40 and ds.classes[0] == "n0000"
    assert ds.train_names[0] == "n0000/000.JPEG"
    first = list(ds.train_images.batches(50, np.random.default_rng(1), shuffle=True, train=True))
    again = list(ds.train_images.batches(50, np.random.default_rng(1), shuffle=True, train=True))
    assert [x.shape for x, _ in first] == [(50, 3, 32, 32)] * 3 + [(10, 3, 32, 32)]
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert sorted(np.concatenate([i for _, i in first]).tolist()) == list(range(160))
    plain = np.concatenate([x for x, _ in ds.train_images.batches(64)])
    assert plain.shape == (160, 3, 32, 32) and 0 <= plain.min() and plain.max() <= 255
    assert not np.array_equal(plain[np.concatenate([i for _, i in first])], np.concatenate([x for x, _ in first]))


def test_crop_box_stays_inside_and_falls_back_to_the_centre():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = rng.integers(10, 300, 2)
        x0, y0, bw, bh = imagenet.crop_box(h, w, rng.random(4 * imagenet.DRAWS))
        assert 0 <= x0 and 0 <= y0 and x0 + bw <= w and y0 + bh <= h and bw > 0 and bh > 0
    assert imagenet.crop_box(10, 1000, np.ones(4 * imagenet.DRAWS)) == (495, 0, 10, 10)  # nothing fits: centre


@pytest.mark.slow
@pytest.mark.parametrize("backend, algorithms, redundancy", [
    pytest.param("mxnet", "mv,wmv,em,mbem,oracle,clean", "3", marks=needs_mxnet), ("torch", "wmv,mbem", "1,3")])
def test_imagenet_pipeline_end_to_end(tree, tmp_path, backend, algorithms, redundancy):
    out = tmp_path / backend
    result = run_script("MBEM.py", "--preset", "imagenet", "--source", tree, "--backend", backend, "--no-compile",
                        "--precision", "fp32", "--workers", "30", "--budget", "160", "--redundancy", redundancy,
                        "--algorithms", algorithms, "--image-size", "32", "--epochs", "2", "--batch-size", "16",
                        "--val-size", "40", "--loader-workers", "0", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["group_size"] == GROUP and results["config"]["depth"] == 18
    cells = results["cells"]
    assert len(cells) == len(redundancy.split(",")) * len(algorithms.split(","))
    for cell in cells:
        assert 0 <= cell["test_error_top5"] <= cell["test_error"] <= 1
        assert cell["val_error"] is not None and cell["epochs"] == 2
    if backend == "mxnet":
        by = {(c["redundancy"], c["algorithm"]): c for c in cells}
        assert by[3, "oracle"]["worker_accuracy_mae"] == 0 and by[3, "clean"]["label_accuracy"] == 1.0
    for name in ("results.csv", "paired.csv", "error_vs_redundancy.png", "worker_accuracy.png"):
        assert (out / name).stat().st_size > 0, name
