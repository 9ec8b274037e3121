"""reproduce.py: the queue's commands resume the committed folders, one precision each, and a
folder this machine cannot compute natively is skipped while the queue goes on."""

import json
import os
import subprocess

import pytest

import reproduce
import resnet_torch
from conftest import ROOT, run_script
from mbemlib import settings, store


def parsed(folder):
    config, _, _ = settings.parse(folder.command(reproduce.CIFAR)[2:])
    return config


@pytest.mark.parametrize("folder", reproduce.QUEUE, ids=lambda f: f.out)
def test_each_command_resumes_its_committed_folder(folder):
    """The command's settings are the folder's own (store.load_results refuses any other), its
    precision is fixed, and a folder's cells are all in that precision."""
    config, args, _ = settings.parse(folder.command(reproduce.CIFAR)[2:])
    assert config.out == folder.out and config.precision == folder.precision in ("fp32", "bf16")
    assert settings.idle_flags(config, args) is None  # MBEM.py would refuse a flag that does nothing
    if not os.path.exists(os.path.join(ROOT, folder.out, "results.json")):
        pytest.skip(f"{folder.out} has no cells yet")
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)  # the folders' configs name their data relative to the checkout
        results = store.load_results(config)
    finally:
        os.chdir(cwd)
    assert store.precision_problem(results, folder.precision) is None


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, ".git")), reason="not a git checkout")
def test_every_folder_the_queue_makes_can_be_committed():
    """.gitignore keeps results/* out but each queued folder's record in (its models, predictions,
    checkpoints and log stay out)."""
    paths = [f"{folder.out}/{name}" for folder in reproduce.QUEUE for name in ("results.json", "models/m.pt")]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    assert ignored == [p for p in paths if p.endswith("models/m.pt")]


def test_every_folder_is_listed_once_with_a_fixed_precision():
    listed = run_script("reproduce.py", "--list").stdout.splitlines()
    assert len(listed) == len(reproduce.QUEUE) == len({f.out for f in reproduce.QUEUE})
    for line, folder in zip(listed, reproduce.QUEUE, strict=False):
        assert line.startswith("python MBEM.py ") and f"--precision {folder.precision} " in line
        assert line.endswith(f"--out {folder.out}") and "auto" not in line


def test_a_bf16_folder_is_skipped_without_native_bf16_and_the_queue_goes_on(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(resnet_torch, "native_bf16", lambda device: False)
    monkeypatch.setattr(reproduce, "ROOT", str(tmp_path))
    monkeypatch.setattr(reproduce, "QUEUE", (
        reproduce.Folder("results/a", ("--preset", "cpu"), "bf16"),
        reproduce.Folder("results/b", ("--preset", "cpu", "--gamma", "0.6"), "fp32"),
        reproduce.Folder("results/c", ("--preset", "cpu", "--gamma", "0.4"), "fp32"),
    ))
    ran = []

    def fake_run(command, cwd):  # MBEM.py's exit statuses: b stops with an error, c finishes
        ran.append(command)
        return subprocess.CompletedProcess(command, 2 if "results/b" in command else 0)

    monkeypatch.setattr(reproduce.subprocess, "run", fake_run)
    assert reproduce.run_queue(reproduce.CIFAR, [], ()) == 1
    out, err = capsys.readouterr()
    assert "skipped results/a (bf16): this CPU" in out and "no native bf16" in out
    assert [c[-1] for c in ran[:2]] == ["results/b", "results/c"] and ran[2][1] == "paper_figure.py"
    assert "results/b stopped with exit status 2; going on" in err and "not finished: results/b" in err


def test_a_missing_source_is_one_line():
    result = run_script("reproduce.py", "--source", "/no/such/cifar.tar.gz")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--source /no/such/cifar.tar.gz: no such folder or archive" in result.stderr


def test_compare_pairs_the_seeds_both_folders_have(monkeypatch, tmp_path, capsys):
    for folder, algorithm, errors, maes in (("a", "oracle", [0.30, 0.40, 0.35], [0.1, 0.2, None]),
                                            ("b", "em", [0.40, 0.45], [0.3, 0.5])):
        (tmp_path / folder).mkdir()
        cells = [{"algorithm": algorithm, "redundancy": 1, "seed": s, "test_error": e, "worker_accuracy_mae": m}
                 for s, (e, m) in enumerate(zip(errors, maes, strict=True))]
        (tmp_path / folder / "results.json").write_text(json.dumps({"cells": cells}))
    monkeypatch.setattr(reproduce, "ROOT", str(tmp_path))
    monkeypatch.setattr(reproduce, "QUESTIONS", (("a - b", ("a", "oracle", 1), ("b", "em", 1)),
                                                 ("a - c", ("a", "oracle", 1), ("c", "mbem", 1))))
    monkeypatch.setattr(reproduce, "WORKER_QUESTIONS", (("a - b", ("a", "oracle", 1), ("b", "em", 1)),))
    assert reproduce.compare() == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:4] == ["a", "-", "b", "2"] and "-0.0750" in lines[1] and "-0.1000 -0.0500" in lines[1]
    assert "not run yet (c)" in lines[2]
    # the workers' error pairs its own seeds: seed 2 of a has none, so seeds 0 and 1
    assert "mean absolute error" in lines[4] and "-0.2500" in lines[5] and "-0.2000 -0.3000" in lines[5]
    assert reproduce.compare(markdown=True) == 0
    assert capsys.readouterr().out.splitlines()[2:] == [
        "| a - b | -0.0750 | [-0.393, +0.243] | -0.1000 -0.0500 |", "",
        "| difference (workers' accuracy, mean absolute error) | mean | 95% interval | seeds |", "|---|---|---|---|",
        "| a - b | -0.2500 | [-0.885, +0.385] | -0.2000 -0.3000 |"]


def test_every_question_pairs_folders_the_queue_makes_with_algorithms_they_run():
    queue = {folder.out: parsed(folder) for folder in reproduce.QUEUE}
    for _, _, name in reproduce.MEASURES:
        for what, *sides in getattr(reproduce, name):
            for folder, algorithm, r in sides:
                assert folder in queue, (what, folder)
                config = queue[folder]
                assert algorithm in config.algorithms and r in config.redundancy, (what, folder, algorithm, r)


def test_the_status_reads_cells_and_time_from_a_dry_run():
    printed = ("3 cells to run\n  cell seed 0 r 1 n 50000 mbem\n  cell seed 1 r 1 n 50000 mbem\n"
               "2 cells, at most 2 trainings (1 stage each) of 10 epochs: 1,000,000 training images; at 900 img/s "
               "(3 timed batches of 128 here, bf16) about 1.8 h, evaluation not counted\n")
    assert reproduce.dry_run_estimate(printed) == (2, 1.8 * 3600)
    assert reproduce.dry_run_estimate(printed.replace("1.8 h", "41 min")) == (2, 41 * 60)
    assert reproduce.dry_run_estimate("0 cells to run\n") == (0, 0.0)


def test_the_status_beside_a_training_uses_the_speed_recorded_here_and_times_nothing(monkeypatch, tmp_path, capsys):
    here = {"cpu": "a CPU", "cpu_flags": ["avx2"], "cores": 2}
    monkeypatch.setattr(reproduce.store, "machine", lambda: here)
    monkeypatch.setattr(reproduce, "ROOT", str(tmp_path))
    monkeypatch.setattr(reproduce, "QUEUE", (reproduce.Folder("results/a", ("--preset", "cpu"), "bf16"),
                                             reproduce.Folder("results/b", ("--preset", "cpu", "--gamma", "0.6"),
                                                              "fp32")))
    cells = [{"precision": "bf16", "machine": here, "train_img_per_s": v} for v in (800.0, 900.0, 1300.0)]
    cells.append({"precision": "bf16", "machine": {**here, "cpu": "another"}, "train_img_per_s": 10.0})
    (tmp_path / "results/a").mkdir(parents=True)
    (tmp_path / "results/a/results.json").write_text(json.dumps({"cells": cells}))
    assert reproduce.recorded_speed("bf16") == 900.0 and reproduce.recorded_speed("fp32") is None
    monkeypatch.setattr(reproduce, "native_problem", lambda precision, gpus: None)
    monkeypatch.setattr(reproduce.store, "in_use", lambda out: "process 7 on vm" if out.endswith("results/a") else None)
    asked = []

    def fake_estimate(folder, source, extra, speed=None):
        asked.append((folder.out, speed))
        return 2, 0 if speed is None else 1800.0 * 900 / speed

    monkeypatch.setattr(reproduce, "estimate", fake_estimate)
    assert reproduce.status(reproduce.CIFAR, [], ()) == 0
    out = capsys.readouterr().out
    assert asked == [("results/a", 900.0), ("results/b", 1.0)]  # nothing timed: a speed for every dry run
    assert "note: results/a is in training now (process 7 on vm)" in out
    assert "about 30 min (in training now)" in out and "not timed beside a training (no fp32 cell made here" in out
    assert "in all, about 30 min here, 1 folders not timed" in out
