"""Real labels: CSV items matched to images, the fixed-budget subsample, and MBEM.py --annotations
end to end."""

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, run_script
from mbemlib import aggregation as agg
from mbemlib import annotations
from mbemlib.cli import InputError
from test_readers_fuzz import tree


def test_items_and_classes_are_matched_or_named():
    train = ["cat/0.jpg", "cat/1.jpg", "dog/0.jpg"]
    assert annotations.match_items(["train/dog/0.jpg", "cat/0.jpg"], train).tolist() == [2, 0]
    with pytest.raises(InputError, match=r"2 items name no training image: 'fox/1.jpg', 'x'"):
        annotations.match_items(["fox/1.jpg", "cat/1.jpg", "x"], train)
    classes = ["cat", "dog", "fox"]
    assert annotations.match_classes(["dog", "cat"], classes).tolist() == [1, 0]
    assert annotations.match_classes(["2", "0"], classes).tolist() == [2, 0]
    with pytest.raises(InputError, match="labels '7' are not class indices 0..2"):
        annotations.match_classes(["7", "0"], classes)
    with pytest.raises(InputError, match="labels 'wolf' are not classes"):
        annotations.match_classes(["wolf", "cat"], classes)


def test_subsample_draws_items_with_enough_labels_and_r_of_their_labels():
    rng = np.random.default_rng(0)
    N, m = 300, 40
    per_image = rng.integers(0, 5, N)  # 0 to 4 labels per image
    image = np.repeat(np.arange(N), per_image)
    worker = np.concatenate([rng.choice(m, k, replace=False) for k in per_image])
    real = annotations.RealLabels(image, worker, rng.integers(0, 3, len(image)), [str(w) for w in range(m)], m)
    allowed = np.ones(N, dtype=bool)
    allowed[:20] = False
    for r in (1, 2, 3):
        n = int(((per_image >= r) & allowed).sum()) // 2
        items, ann = annotations.subsample(real, allowed, r, n, np.random.default_rng(r), K=3)
        assert len(items) == n == len(set(items.tolist())) and allowed[items].all() and (per_image[items] >= r).all()
        assert (np.bincount(ann.items, minlength=n) == r).all()
        given = set(zip(image.tolist(), worker.tolist(), real.label.tolist(), strict=True))
        assert {(items[i], w, lab) for i, w, lab in zip(ann.items, ann.workers, ann.labels, strict=True)} <= given
        again, _ = annotations.subsample(real, allowed, r, n, np.random.default_rng(r), K=3)
        assert np.array_equal(items, again)
    items, ann = annotations.subsample(real, allowed, 0, 0, rng, K=3)
    assert len(ann.items) == per_image[allowed].sum() and len(items) == ((per_image > 0) & allowed).sum()
    with pytest.raises(InputError, match="needs 1000 images with at least 2 labels"):
        annotations.subsample(real, allowed, 2, 1000, rng, K=3)


def test_empirical_accuracy():
    ann = agg.Annotations.from_arrays([0, 1, 2, 0], [0, 0, 1, 1], [1, 0, 1, 0], m=3)
    accuracy = annotations.empirical_accuracy(ann, np.array([1, 1, 1]))
    assert accuracy[:2].tolist() == [0.5, 0.5] and np.isnan(accuracy[2])


@pytest.fixture(scope="module")
def labelled_tree(tmp_path_factory):
    """A tiny class-folder tree and a CSV of three workers' labels of its training images: one
    always right, two who answer 'a' whatever the image."""
    root = tree(tmp_path_factory.mktemp("tree") / "images")
    answers = root.parent / "answers.csv"
    truth = {"a/0.png": "a", "a/1.png": "a", "b/0.png": "b", "b/1.png": "b"}
    with open(answers, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["item", "worker", "label"])
        for name, label in truth.items():
            out.writerows([(f"train/{name}", "good", label), (name, "lazy1", "a"), (name, "lazy2", "a")])
    return root, answers


def annotations_worker(name):
    return ["good", "lazy1", "lazy2"].index(name)  # in order of first appearance in the CSV


def mbem(*args):
    return run_script("MBEM.py", *args)


@pytest.mark.slow
def test_mbem_on_real_labels_end_to_end(labelled_tree, tmp_path):
    root, answers = labelled_tree
    out = tmp_path / "out"
    result = mbem("--preset", "smoke", "--backend", "torch", "--no-compile", "--dataset", "folder", "--source", root,
                  "--data-dir", tmp_path / "cache", "--annotations", answers, "--algorithms", "mv,wmv,em,mbem,clean",
                  "--plan", "1:4,3:2", "--batch-size", "2", "--select-epoch", "last",
                  "--epochs", "1", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    cells = {(c["redundancy"], c["algorithm"]): c for c in results["cells"]}
    assert set(cells) == {(r, a) for r in (1, 3) for a in ("mv", "wmv", "em", "mbem", "clean")}
    assert {c["n"] for c in results["cells"]} == {4, 2}
    with open(out / "labels" / "mv-seed0-r3-posterior.csv") as f:
        assert {row["label"] for row in csv.DictReader(f)} == {"a"}  # two lazy workers outvote the good one
    assert cells[3, "clean"]["label_accuracy"] == 1.0
    truth = cells[3, "em"]["worker_accuracy_true"]  # the workers' empirical accuracy on the drawn items
    assert truth[annotations_worker("good")] == 1.0 and {truth[1], truth[2]} <= {0.0, 0.5, 1.0}
    # real workers: the estimate counts labels as the empirical accuracy does; at r = 1 majority
    # vote's targets are the labels, so every labelling worker is estimated all right
    assert {c["worker_accuracy_kind"] for c in results["cells"] if c["worker_accuracy_mae"] is not None} == {
        "share of labels right"}
    assert {v for v in cells[1, "mv"]["worker_accuracy"] if v is not None} == {1.0}
    for name in ("mbem-seed0-r1-posterior.csv", "mbem-seed0-r1-workers.csv", "em-seed0-r3-workers.csv",
                 "clean-seed0-r1-posterior.csv"):
        assert (out / "labels" / name).stat().st_size > 0, name
    with open(out / "labels" / "mbem-seed0-r1-posterior.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["item", "label", "p_a", "p_b"] and {r["item"] for r in rows} <= {
        "a/0.png", "a/1.png", "b/0.png", "b/1.png"}


@pytest.mark.parametrize("rows, flags, message", [
    ([("fox/9.png", "w", "a"), ("a/0.png", "w", "b")], [], "1 items name no training image: 'fox/9.png'"),
    ([("a/0.png", "w", "wolf"), ("a/1.png", "w", "b")], [], "labels 'wolf' are not classes of the dataset"),
    ([("a/0.png", "w", "a"), ("a/1.png", "w", "b")], ["--budget", "4", "--redundancy", "2"],
     "a redundancy of 2 is above what the annotations have: at most 1 labels per image"),
    ([("a/0.png", "w", "a"), ("a/1.png", "w", "b")], ["--algorithms", "oracle"], "needs simulated workers"),
])
@pytest.mark.slow
def test_bad_annotations_are_one_line(labelled_tree, tmp_path, rows, flags, message):
    root, _ = labelled_tree
    answers = tmp_path / "bad.csv"
    answers.write_text("item,worker,label\n" + "".join(",".join(r) + "\n" for r in rows))
    result = mbem("--preset", "smoke", "--backend", "torch", "--dataset", "folder", "--source", root, "--data-dir",
                  tmp_path / "cache", "--annotations", answers, "--algorithms", "mv,wmv,mbem", "--select-epoch", "last",
                  "--out", tmp_path / "out", *flags)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0]


def test_cifar10n_preset_needs_annotations(tmp_path):
    result = mbem("--preset", "cifar10n", "--out", tmp_path / "x")
    assert result.returncode == 2 and "python cifar10n.py" in result.stderr


def bare_tree(root, test=True):
    """Images nobody has classified (photos/0.png ...: bright ones are "day", dark ones "night"), a
    test/<class>/ tree if asked, and three workers' labels, the third always wrong."""
    from PIL import Image

    rng = np.random.default_rng(0)
    truth = {}
    (root / "photos").mkdir(parents=True)
    for i in range(12):
        day = i % 2 == 0
        Image.fromarray(np.full((8, 8, 3), 200 if day else 30, np.uint8)).save(root / "photos" / f"{i}.png")
        truth[f"photos/{i}.png"] = "day" if day else "night"
    if test:
        for c, value in (("day", 210), ("night", 20)):
            (root / "test" / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((8, 8, 3), value + int(rng.integers(0, 9)), np.uint8)).save(
                    root / "test" / c / f"{i}.png")
    rows = [(item, f"w{w}", label if w < 2 else ("night" if label == "day" else "day"))
            for item, label in truth.items() for w in range(3)]
    answers = root.parent / f"answers-{root.name}.csv"
    answers.write_text("item,worker,label\n" + "".join(",".join(r) + "\n" for r in rows))
    return answers


@pytest.mark.slow
@pytest.mark.parametrize("test", [True, False])
def test_images_whose_class_nobody_knows(tmp_path, test):
    """A tree without training class folders: classes come from the labels, a test/ tree (if any)
    gives the test error, and what needs the truth is absent, not zero. Every cell leaves its
    model (loadable, predicting what its predictions file says) and its predictions."""
    import resnet_torch

    answers = bare_tree(tmp_path / "tree", test)
    out = tmp_path / "out"
    result = mbem("--preset", "paper", "--backend", "torch", "--no-compile", "--dataset", "folder", "--source",
                  tmp_path / "tree", "--data-dir", tmp_path / "cache", "--annotations", answers, "--algorithms",
                  "mv,wmv,em,mbem", "--select-epoch", "last", "--depth", "8", "--epochs", "2", "--no-two-stage",
                  "--batch-size", "4", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert [c["redundancy"] for c in cells] == [0] * 4 and {c["n"] for c in cells} == {12}
    for cell in cells:
        assert cell["label_accuracy"] is None and cell["worker_accuracy_mae"] is None
        assert (cell["test_error"] is not None) == test
        assert all(v is None for v in cell["worker_accuracy_true"]) and None not in cell["worker_accuracy"]
        if cell["algorithm"] == "em":  # two workers agree, the third never does: EM finds it out
            assert cell["worker_accuracy"][2] < 0.1 < 0.9 < min(cell["worker_accuracy"][:2])
    model, meta = resnet_torch.load_model(str(out / "models" / "mbem-seed0-r0.pt"))
    assert meta["classes"] == ["day", "night"]
    with open(out / "predictions" / "mbem-seed0-r0.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["item"] for r in rows) == sorted(f"photos/{i}.png" for i in range(12))
    from PIL import Image
    images = np.stack([np.asarray(Image.open(tmp_path / "tree" / r["item"])).transpose(2, 0, 1) for r in rows])
    probs = resnet_torch.predict_proba(model, images)
    assert np.abs(probs - np.array([[float(r["p_day"]), float(r["p_night"])] for r in rows])).max() < 1e-5


@pytest.mark.slow
def test_the_readmes_own_command_runs_as_printed(tmp_path):
    """`python MBEM.py --annotations answers.csv --dataset folder --source my_images/ ...` from the
    README, in a folder holding those two (the paper preset's 60 epochs, on 12 tiny images)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    command = re.search(r"\npython (MBEM\.py --annotations .*?)\n```", text, re.S).group(1)
    args = command.replace("\\\n", " ").split()
    answers = bare_tree(tmp_path / "my_images")
    os.rename(answers, tmp_path / "answers.csv")
    env = dict(os.environ, MBEM_DATA=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, os.path.join(ROOT, args[0]), *args[1:]], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    cells = json.loads((tmp_path / "results" / "mine" / "results.json").read_text())["cells"]
    assert {c["algorithm"] for c in cells} == {"mv", "wmv", "em", "mbem"} and all(c["epochs"] == 120 for c in cells)


@pytest.mark.parametrize("flags, message", [
    ([], "simulated workers label each image by its class, and 12 training images have none"),
    (["--algorithms", "mv,clean"], "--algorithms clean trains on the true classes"),
    (["--select-epoch", "test"], "no test set"),
    (["--select-epoch", "val", "--val-size", "2"], "--select-epoch val holds out training images of known class"),
])
def test_what_needs_the_truth_is_refused_without_it(tmp_path, flags, message, capsys):
    import MBEM

    answers = bare_tree(tmp_path / "tree", test=False)
    real = ["--annotations", str(answers)] if flags else []
    status = MBEM.command(["--preset", "paper", "--backend", "torch", "--dataset", "folder", "--source",
                           str(tmp_path / "tree"), "--data-dir", str(tmp_path / "cache"), "--out",
                           str(tmp_path / "out"), *real, *(flags or ["--plan", "1:10", "--select-epoch", "last"])])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and message in error[-1] and not (tmp_path / "out").exists()


def test_draw_per_item_keeps_r_of_each_items_labels_uniformly():
    item = np.array([0, 0, 0, 1, 2, 2, 0])  # item 0 has four labels, 1 one, 2 two
    rng = np.random.default_rng(0)
    chosen = np.zeros(len(item))
    for _ in range(4000):
        kept = annotations.draw_per_item(item, 2, rng)
        assert np.bincount(item[kept], minlength=3).tolist() == [2, 1, 2]
        chosen[kept] += 1
    share = chosen / 4000
    assert share[[3, 4, 5]].tolist() == [1.0, 1.0, 1.0]  # fewer than r: all of them
    assert np.allclose(share[[0, 1, 2, 6]], 0.5, atol=0.03)  # four labels, two drawn: each half the time
