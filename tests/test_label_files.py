"""The aggregation command line: a round trip with string names, and every bad input."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

import noise_sim
from conftest import ROOT, run_script, shared_path
from mbemlib import aggregation, label_files


def run(*args):
    return run_script("aggregation.py", *args)


def write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def answers(tmp_path):
    """Simulated labels with string items, workers and class names, plus the truth."""
    rng = np.random.default_rng(0)
    classes = ["cat", "dog", "fox, red"]  # a class name that needs CSV quoting
    conf = noise_sim.class_wise_hammer_spammer(12, 3, 0.5, rng)
    truth = rng.integers(0, 3, 300)
    items, workers, labels = noise_sim.simulate_labels(truth, conf, 5, rng)
    path = tmp_path / "answers.csv"
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["task", "worker", "answer"])  # aliases
        out.writerows((f"img-{i:04d}", f"w{w}", classes[l]) for i, w, l in zip(items, workers, labels, strict=True))
    return path, {f"img-{i:04d}": classes[t] for i, t in enumerate(truth)}


@pytest.mark.parametrize("method", ["mv", "wmv", "em", "ds"])
def test_round_trip_with_string_names(answers, tmp_path, method):
    path, truth = answers
    out, conf_out = tmp_path / "post.csv", tmp_path / "conf.csv"
    result = run(path, "--method", method, "--out", out, "--confusions-out", conf_out)
    assert result.returncode == 0, result.stderr
    assert "items 300 workers 12 labels 1500 classes 3" in result.stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["item", "label", "p_cat", "p_dog", "p_fox, red"]
    assert len(rows) == 300
    probs = np.array([[float(r[c]) for c in ("p_cat", "p_dog", "p_fox, red")] for r in rows])
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    accuracy = np.mean([truth[r["item"]] == r["label"] for r in rows])
    assert accuracy > 0.7
    with open(conf_out, newline="") as f:
        conf_rows = list(csv.DictReader(f))
    assert len(conf_rows) == 12 * 3 * 3


def test_stdout_when_no_out(answers):
    path, _ = answers
    result = run(path, "--method", "wmv")
    assert result.returncode == 0
    assert result.stdout.startswith("item,label,p_cat,p_dog,")
    assert len(result.stdout.strip().splitlines()) == 301


def test_cli_matches_library(answers, tmp_path):
    path, _ = answers
    out = tmp_path / "post.csv"
    assert run(path, "--out", out).returncode == 0
    ann, *_ = label_files.read_answers(str(path))
    expected = aggregation.dawid_skene(ann).posterior
    with open(out, newline="") as f:
        got = np.array([row[2:] for row in list(csv.reader(f))[1:]], dtype=float)
    assert np.allclose(got, expected, atol=1e-6)


BAD = {
    "empty": ("", "empty file"),
    "header only": ("item,worker,label\n", "no labels"),
    "missing column": ("item,worker\n1,a\n", "no column named label or answer"),
    "blank field": ("item,worker,label\n1,a,x\n2,,y\n", ":3: blank or NaN worker"),
    "nan label": ("item,worker,label\n1,a,x\n2,b,NaN\n", ":3: blank or NaN label"),
    "padded null": ("item,worker,label\n1,a,x\n2,b,y\n3, NULL ,y\n", ":4: blank or NaN worker"),
    "duplicate pair": ("item,worker,label\n1,a,x\n2,a,y\n1,a,y\n", ":4: duplicate (item, worker) row: 1, a"),
    "single class": ("item,worker,label\n1,a,x\n2,a,x\n", "at least two classes"),
    "ragged row": ("item,worker,label\n1,a,x\n2,b,y,z,w\n", "cannot read as CSV"),
    "binary": ("\x00\x01\x02\xff\xfe", "cannot read"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, case):
    text, message = BAD[case]
    path = tmp_path / "answers.csv"
    if case == "binary":
        path.write_bytes(text.encode("latin-1"))
    else:
        write(path, text)
    out = tmp_path / "out.csv"
    result = run(path, "--out", out)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not out.exists()
    assert os.listdir(tmp_path) == ["answers.csv"]  # no temporary file left behind


def test_unreadable_path(tmp_path):
    result = run(tmp_path / "missing.csv")
    assert result.returncode == 2 and "cannot read" in result.stderr


def test_whitespace_around_names_is_ignored(tmp_path):
    path = write(tmp_path / "a.csv", "item,worker,label\n1, a,x\n1,b ,y\n2,a, x\n2,b,y\n")
    ann, items, workers, classes = label_files.read_answers(str(path))
    assert workers == ["a", "b"] and classes == ["x", "y"] and ann.K == 2


def test_numeric_classes_sort_numerically(tmp_path):
    path = write(tmp_path / "a.csv", "item,worker,label\n1,a,10\n1,b,9\n2,a,2\n")
    _, _, _, classes = label_files.read_answers(str(path))
    assert classes == ["2", "9", "10"]


@pytest.mark.parametrize("flags, message", [
    (["--out", "/no/such/dir/out.csv"], "--out: /no/such/dir: no such folder"),
    (["--confusions-out", "/no/such/dir/c.csv"], "--confusions-out: /no/such/dir: no such folder"),
    (["--max-iter", "0"], "--max-iter: must be at least 1, not 0"),
    (["--tol", "nan"], "--tol: must be a finite number"),
    (["--tol", "-1"], "--tol: must be at least 0"),
    (["--seed", "-1"], "--seed: must be at least 0"),
    (["--method", "magic"], "invalid choice"),
])
def test_bad_flags_are_refused_before_reading(answers, tmp_path, flags, message):
    path, _ = answers
    result = run(path, *flags)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_an_out_that_is_a_folder_is_refused(answers, tmp_path):
    path, _ = answers
    result = run(path, "--out", tmp_path)
    assert result.returncode == 2 and "is a folder, not a file" in result.stderr


def test_dawid_skene_needs_an_iteration():
    ann = aggregation.Annotations.from_arrays([0, 0, 1], [0, 1, 0], [0, 1, 0])
    with pytest.raises(ValueError, match="max_iter must be at least 1"):
        aggregation.dawid_skene(ann, max_iter=0)


@pytest.mark.slow
def test_mbem_from_a_models_probabilities_and_accuracy_on_known_truth(tmp_path):
    """--method mbem with the majority vote's posterior CSV as the model: the paper's step from its
    argmax; --truth prints the accuracy on the items it covers (Dawid-Skene: 0.8426 on dog, as
    crowd-kit 1.4.2 gives)."""
    answers, truth = shared_path("crowd", "dog", "answers.csv"), shared_path("crowd", "dog", "truth.csv")
    model, out = tmp_path / "mv.csv", tmp_path / "mbem.csv"
    assert run(answers, "--method", "mv", "--out", model).returncode == 0
    result = run(answers, "--method", "mbem", "--model-probs", model, "--truth", truth, "--out", out)
    assert result.returncode == 0, result.stderr
    ann, items, _, classes = label_files.read_answers(answers)
    with open(model) as f:
        probs = np.array([[float(row[f"p_{c}"]) for c in classes] for row in csv.DictReader(f)])
    expected, _, _ = aggregation.mbem_step(ann, probs)
    with open(out) as f:
        got = np.array([[float(row[f"p_{c}"]) for c in classes] for row in csv.DictReader(f)])
    assert np.abs(got - expected).max() <= 1e-6
    assert "truth: accuracy" in result.stderr.splitlines()[-1] and "on the 807 of 807 items" in result.stderr
    em = run(answers, "--truth", truth, "--out", tmp_path / "em.csv")
    assert "truth: accuracy 0.8426 on the 807 of 807" in em.stderr


@pytest.mark.parametrize("flags, message", [
    (["--method", "mbem"], "--method mbem needs --model-probs"),
    (["--model-probs", "x.csv"], "--model-probs is for --method mbem"),
    (["--class-prior"], "--class-prior is for --method mbem"),
    (["--mbem-step", "one-coin"], "--mbem-step is for --method mbem"),
])
def test_mbem_flags_go_together(answers, flags, message):
    path, _ = answers
    result = run(path, *flags)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("step", ["one-coin", "per-class-coin"])
def test_mbem_step_is_the_librarys_corrected_step(answers, tmp_path, step):
    """--mbem-step: the command gives the posterior and confusions of aggregation's step of that
    name, from the model's CSV (here the majority vote's posterior), with the class prior too."""
    path, _ = answers
    model, out, workers = tmp_path / "mv.csv", tmp_path / "mbem.csv", tmp_path / "workers.csv"
    assert run(path, "--method", "mv", "--out", model).returncode == 0
    result = run(path, "--method", "mbem", "--model-probs", model, "--mbem-step", step, "--class-prior",
                 "--out", out, "--confusions-out", workers)
    assert result.returncode == 0, result.stderr
    ann, _, _, classes = label_files.read_answers(path)
    with open(model) as f:
        probs = np.array([[float(row[f"p_{c}"]) for c in classes] for row in csv.DictReader(f)])
    prior = aggregation.estimate_prior(aggregation.one_hot(probs.argmax(axis=1), ann.K))
    expected, confusions, _ = aggregation.MBEM_STEPS[step](ann, probs, prior=prior)
    with open(out) as f:
        got = np.array([[float(row[f"p_{c}"]) for c in classes] for row in csv.DictReader(f)])
    assert np.abs(got - expected).max() <= 1e-6
    with open(workers) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == confusions.size
    assert float(rows[1]["probability"]) == pytest.approx(confusions.reshape(-1)[1], abs=1e-6)
    release = run(path, "--method", "mbem", "--model-probs", model, "--class-prior", "--out", tmp_path / "r.csv")
    assert release.returncode == 0 and (tmp_path / "r.csv").read_text() != out.read_text()


@pytest.mark.parametrize("model_rows, message", [
    (lambda items: items[1:], "no row for 1 labelled items"),
    (lambda items: items + items[:1], "appears twice"),
])
def test_a_model_that_misses_or_repeats_an_item_is_one_line(answers, tmp_path, model_rows, message):
    path, _ = answers
    ann, items, _, classes = label_files.read_answers(str(path))
    model = tmp_path / "model.csv"
    with open(model, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["item"] + [f"p_{c}" for c in classes])  # "p_fox, red" is quoted
        out.writerows([item, 0.5, 0.5] + [0] * (len(classes) - 2) for item in model_rows(items))
    result = run(path, "--method", "mbem", "--model-probs", model, "--out", tmp_path / "out.csv")
    assert result.returncode == 2 and message in result.stderr and not (tmp_path / "out.csv").exists()


def test_labels_alike_but_for_case_or_spaces_are_named(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("item,worker,label\n1,a,Cat\n1,b,cat \n2,a,cat\n2,b,dog\n")
    result = run(path, "--out", tmp_path / "out.csv")
    assert result.returncode == 0
    assert "warning: " in result.stderr and "'Cat' and 'cat' and 'cat '" in result.stderr
    with open(tmp_path / "out.csv") as f:
        assert next(csv.reader(f)) == ["item", "label", "p_Cat", "p_cat", "p_dog"]  # spaces dropped, case kept


@pytest.mark.parametrize("delimiter, name", [("\t", "tab"), (";", "semicolon")])
def test_another_delimiter_is_named(tmp_path, delimiter, name):
    path = tmp_path / "a.csv"
    path.write_text(delimiter.join(["item", "worker", "label"]) + "\n" + delimiter.join(["1", "a", "x"]) + "\n")
    result = run(path)
    assert result.returncode == 2 and f"looks {name}-separated" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_max_iter_before_convergence_warns(answers, tmp_path):
    path, _ = answers
    result = run(path, "--max-iter", "2", "--out", tmp_path / "out.csv")
    assert result.returncode == 0 and "warning: Dawid-Skene stopped at --max-iter 2 before converging" in result.stderr
    assert "warning" not in run(path, "--out", tmp_path / "out.csv").stderr


def test_the_readmes_aggregation_command_runs_as_printed(answers, tmp_path):
    with open(os.path.join(ROOT, "README.md")) as f:
        line = next(line for line in f if line.startswith("python aggregation.py answers.csv"))
    path, _ = answers
    os.rename(path, tmp_path / "answers.csv")
    args = line.split()[1:]
    result = subprocess.run([sys.executable, os.path.join(ROOT, args[0]), *args[1:]], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "posterior.csv").stat().st_size > 0 and (tmp_path / "workers.csv").stat().st_size > 0


def test_truth_in_other_labels_is_refused_and_extra_columns_are_named(tmp_path):
    """0/1 truth for duck/notduck answers would print accuracy 0.0000: refused, naming both label
    sets; a truth with one class the answers lack is a warning; an unread column is named once."""
    answers, truth = tmp_path / "answers.csv", tmp_path / "truth.csv"
    answers.write_text("item,worker,label,seconds\na,w1,duck,3\na,w2,notduck,4\nb,w1,notduck,2\nb,w2,notduck,5\n")
    truth.write_text("item,label\na,1\nb,0\n")
    result = run(answers, "--truth", truth, "--out", tmp_path / "out.csv")
    assert result.returncode == 2 and "Traceback" not in result.stderr and not (tmp_path / "out.csv").exists()
    assert "its labels 0,1 are not among the answers' labels duck,notduck" in result.stderr
    assert "note: " in result.stderr and "column seconds not read" in result.stderr
    truth.write_text("item,label\na,duck\nb,goose\n")
    result = run(answers, "--truth", truth, "--out", tmp_path / "out.csv")
    assert result.returncode == 0 and "warning: --truth" in result.stderr and "goose" in result.stderr
    assert "truth: accuracy" in result.stderr
