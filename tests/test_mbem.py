"""MBEM.py end to end with the smoke preset, resume, refusal of a changed config, bad flags."""

import csv
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import MBEM
import noise_sim
from conftest import ROOT, needs_mxnet, run_script
from mbemlib import aggregation as agg
from mbemlib import dataset, settings, store
from mbemlib.cli import RunError

SCRIPT = os.path.join(ROOT, "MBEM.py")


def run(*args):
    return run_script("MBEM.py", *args)


def smoke_args(out):
    """The smoke preset (scikit-learn's digits, every algorithm; real images are trained on in
    test_resnet*.py and test_annotations.py)."""
    return ["--preset", "smoke", "--out", out]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    result = run(*smoke_args(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.mark.slow
@needs_mxnet
def test_smoke_writes_every_cell_and_the_three_files(smoke_run):
    out, _ = smoke_run
    assert {"results.json", "results.csv", "error_vs_redundancy.png"} <= set(os.listdir(out))
    results = json.loads((out / "results.json").read_text())
    config = results["config"]
    plan = settings.plan(settings.Config(**config))
    expected = {(s, r, n, a) for s in config["seeds"] for r, n in plan for a in config["algorithms"]}
    assert {(c["seed"], c["redundancy"], c["n"], c["algorithm"]) for c in results["cells"]} == expected
    for cell in results["cells"]:
        assert 0 <= cell["test_error"] <= 1 and 0 <= cell["label_accuracy"] <= 1
        assert cell["epochs"] >= 1 and cell["train_img_per_s"] > 0
    assert results["versions"]["mxnet"] == "1.9.1" and results["wall_seconds"] > 0
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(expected)
    png = (out / "error_vs_redundancy.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


@pytest.mark.slow
@needs_mxnet
def test_smoke_results_make_sense(smoke_run):
    out, _ = smoke_run
    cells = json.loads((out / "results.json").read_text())["cells"]
    error = {(c["redundancy"], c["algorithm"]): c["test_error"] for c in cells}
    label_accuracy = {(c["redundancy"], c["algorithm"]): c["label_accuracy"] for c in cells}
    mae = {(c["redundancy"], c["algorithm"]): c["worker_accuracy_mae"] for c in cells}
    # r = 1 trains on 600 items: clean labels (about 0.17 error) beat majority vote (about 0.55) by
    # far more than MXNet's run-to-run spread. At r = 3 the 200 items give 40 steps in all, every
    # model stays near chance and their order is noise (clean 0.716 vs MV 0.640 failed CI once).
    assert error[1, "clean"] < error[1, "mv"] - 0.1
    for r in (1, 3):
        assert label_accuracy[r, "clean"] == 1.0
        assert label_accuracy[r, "oracle"] >= label_accuracy[r, "mv"]
        assert mae[r, "oracle"] == 0.0
    assert error[1, "mv"] == error[1, "wmv"]  # r = 1: the same targets, so the same (reused) model
    assert all(len(c["rounds"]) == 1 for c in cells if c["algorithm"] == "mbem")  # the release's T = 1
    assert {c.get("worker_accuracy_kind") for c in cells if c["worker_accuracy_mae"] is not None} == {
        "mean confusion diagonal"}  # simulated workers: their true confusions' diagonal


@pytest.mark.slow
@needs_mxnet
def test_rerun_skips_finished_cells(smoke_run):
    """A finished folder is left as it is, results.json and figures byte for byte."""
    out, _ = smoke_run
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    result = run(*smoke_args(out))
    assert result.returncode == 0
    cells = len(json.loads(before["results.json"])["cells"])
    assert f"all {cells} cells of {out} are done" in result.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


@pytest.mark.slow
@needs_mxnet
def test_plot_only_redraws(smoke_run):
    out, _ = smoke_run
    os.remove(out / "error_vs_redundancy.png")
    result = run("--plot-only", "--out", out)
    assert result.returncode == 0 and (out / "error_vs_redundancy.png").exists()


@pytest.mark.slow
@needs_mxnet
def test_changed_config_on_the_same_out_is_refused(smoke_run):
    out, _ = smoke_run
    result = run(*smoke_args(out), "--gamma", "0.5")
    assert result.returncode != 0
    assert "different config" in result.stderr and "gamma" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("flags, message", [
    (["--depth", "9"], "6n + 2"),
    (["--algorithms", "mv,magic"], "unknown algorithms magic"),
    (["--gpus", "zero"], "comma-separated GPU ids"),
    (["--plan", "1-5"], "r:n pairs"),
    (["--dataset", "folder"], "needs --source"),
    (["--redundancy", "1,200"], "exceeds the number of workers"),
    (["--gamma", "2"], "[0, 1]"),
    (["--seeds", "x"], "comma-separated ints"),
    (["--dataset", "folder", "--source", "/nonexistent/images"], "no such folder"),
    (["--budget", "100000"], "the plan asks for"),
    (["--budget", "0"], "--budget: must be at least 1, not 0"),
    (["--val-size", "-5"], "--val-size: must be at least 1, not -5"),
    (["--lr", "-1"], "--lr: must be above 0, not -1"),
    (["--lr", "nan"], "--lr: must be a finite number"),
    (["--epochs", "2.5"], "--epochs: expected an integer"),
    (["--redundancy", "1,,3"], "expected comma-separated ints"),
    (["--data-dir", "/dev/null/x"], "--data-dir: /dev/null is a file, not a folder"),
])
def test_bad_flags_give_one_clear_error(tmp_path, flags, message, capsys):
    """In-process, as `python MBEM.py` runs (MBEM.command); test_an_out_that_is_a_file_is_refused and
    others run the script itself."""
    try:
        status = MBEM.command(["--preset", "smoke", "--backend", "torch", "--out", str(tmp_path / "x"),
                               *map(str, flags)])
    except SystemExit as stop:  # argparse's way out
        status = stop.code
    stderr = capsys.readouterr().err
    assert status == 2 and message in stderr
    assert len(stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_an_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "taken").write_text("mine")
    result = run("--preset", "smoke", "--out", tmp_path / "taken")
    assert result.returncode == 2 and "--out: " in result.stderr and "is a file, not a folder" in result.stderr
    assert (tmp_path / "taken").read_text() == "mine"


@needs_mxnet
def test_no_engine_banner():
    """MXNet prints 'MXNet start using engine' when MXNET_ENGINE_TYPE is set: the trainer leaves it
    unset, so a network built and run through it prints no banner (and the same code with the
    variable set does: the check can see one)."""
    code = ("import numpy as np, resnet; m = resnet.build(8, 2); "
            "print(resnet.predict_proba(m, np.zeros((2, 3, 8, 8), np.uint8)).shape)")
    env = {k: v for k, v in os.environ.items() if k != "MXNET_ENGINE_TYPE"}
    quiet = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env)
    assert quiet.returncode == 0 and "(2, 2)" in quiet.stdout, quiet.stderr[-2000:]
    assert "start using engine" not in quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=dict(env, MXNET_ENGINE_TYPE="ThreadedEnginePerDevice"))
    assert "start using engine" in loud.stderr


def test_presets_and_plan_parsing():
    config, _, _ = settings.parse([])
    assert settings.plan(config) == [list(p) for p in noise_sim.RELEASE_PLAN]
    assert config.two_stage and not config.class_prior and config.rounds == 1 and config.epochs == 60
    config, _, _ = settings.parse(["--preset", "cpu", "--redundancy", "1,2", "--budget", "100", "--no-two-stage"])
    assert settings.plan(config) == [[1, 100], [2, 50]] and not config.two_stage
    config, _, _ = settings.parse(["--preset", "cpu", "--plan", "2:10,1:20"])
    assert settings.plan(config) == [[2, 10], [1, 20]]
    config, _, _ = settings.parse(["--algorithms", "mv,DS"])
    assert config.algorithms == ["mv", "em"]  # one name for label-only EM, Dawid-Skene's accepted


TORCH_SMOKE = ["--preset", "smoke", "--backend", "torch", "--no-compile", "--algorithms", "mv,wmv,mbem,clean"]


@pytest.fixture(scope="module")
def torch_smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("torch") / "run"
    result = run(*TORCH_SMOKE, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    (out / "run.log").write_text(result.stdout + "\n--- stderr\n" + result.stderr)
    return out


@pytest.mark.slow
def test_torch_backend_end_to_end(torch_smoke):
    """The smoke preset on the torch backend: every cell, the backend and precision recorded."""
    results = json.loads((torch_smoke / "results.json").read_text())
    assert len(results["cells"]) == 2 * 4
    assert {(c["backend"], c["precision"]) for c in results["cells"]} == {("torch", "fp32")}
    assert results["versions"]["torch"].startswith("2.") and results["machine"]["cores"] >= 1
    error = {(c["redundancy"], c["algorithm"]): c["test_error"] for c in results["cells"]}
    assert error[1, "clean"] < 0.5 and error[1, "mv"] == error[1, "wmv"]
    assert {"paired.csv", "worker_accuracy.png", "error_vs_redundancy.png", "mbem_minus_baselines.png", "models",
            "predictions"} <= set(os.listdir(torch_smoke))


@pytest.mark.slow
def test_class_wise_workers_with_many_hammers_end_to_end(tmp_path):
    """The paper's 6_chs panel in small: class-wise workers, gamma 0.6, through the whole pipeline.
    Each (worker, class) row is a hammer or a spammer on its own, so a worker's true accuracy is
    the mean of its confusion's diagonal, and single labels are right about 0.6 + 0.4 * 0.11."""
    out = tmp_path / "run"
    result = run("--preset", "smoke", "--backend", "torch", "--no-compile", "--worker-model", "class-wise",
                 "--gamma", "0.6", "--algorithms", "mv,wmv,em,mbem", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["worker_model"] == "class-wise" and len(results["cells"]) == 2 * 4
    config = results["config"]
    confusions = noise_sim.simulate_workers(config["workers"], 10, 0.6, np.random.default_rng(0), "class-wise")
    diagonal = confusions[:, np.arange(10), np.arange(10)]
    assert 0.15 < diagonal.std(axis=1).mean()  # accuracy differs by class within a worker
    cells = {(c["redundancy"], c["algorithm"]): c for c in results["cells"]}
    true = cells[1, "mbem"]["worker_accuracy_true"]
    active = [w for w, t in enumerate(true) if t is not None]
    assert np.allclose([true[w] for w in active], diagonal.mean(axis=1)[active], atol=1e-5)
    assert abs(cells[1, "mv"]["label_accuracy"] - diagonal.mean()) < 0.06  # single labels: the mean diagonal
    assert cells[3, "mv"]["label_accuracy"] > cells[1, "mv"]["label_accuracy"]  # three votes beat one
    # at r = 1 majority vote sees no disagreement, so WMV takes every worker for far better than it is
    # (each agrees with itself); the paper's claim 3 starts here
    wmv = [cells[1, "wmv"]["worker_accuracy"][w] for w in active]
    assert np.mean(wmv) - np.mean([true[w] for w in active]) > 0.15
    assert all(cells[r, a]["worker_accuracy_mae"] is not None for r in (1, 3) for a in ("wmv", "em", "mbem"))


@pytest.mark.slow
def test_a_long_run_shows_its_progress_and_keeps_each_epoch(torch_smoke):
    """One sweep line per cell on the screen and no epoch lines there (stderr not a terminal: no
    bars either); one plain line per epoch in <out>/train.log; and every cell's per-epoch history
    (two stages of 10 epochs) for learning curves."""
    stdout, stderr = (torch_smoke / "run.log").read_text().split("\n--- stderr\n")
    sweep = [line for line in stdout.splitlines() if line.startswith("[")]
    assert len(sweep) == 8 and sweep[-1].startswith("[8 of 8 cells]") and sweep[-1].endswith("about 0 s left")
    assert "\r" not in stderr and not re.search(r" epoch \d+/", stdout + stderr)
    assert f"every epoch in {torch_smoke / 'train.log'} (-v: on the screen too)" in stdout
    epochs = (torch_smoke / "train.log").read_text().splitlines()
    assert len(epochs) >= 2 * 10 * 6 and all(" epoch " in line and line.endswith(" img/s") for line in epochs)
    for cell in json.loads((torch_smoke / "results.json").read_text())["cells"]:
        history = cell["history"]
        assert len(history) == 20 and [h["stage"] for h in history] == [1] * 10 + [2] * 10
        assert {"loss", "train_acc", "lr", "updates", "val_acc"} <= set(history[0])


def test_each_cell_counts_the_trainings_it_makes_and_their_items():
    """What the dry run's estimate adds up: MV and WMV share a model at r = 1, MBEM trains its
    rounds and its bootstrap when nothing gives it one, CROWDLAB a model per fold on the other
    fold's half of the items, then its final one (so two trainings' images in all)."""
    config, _, _ = settings.parse(["--preset", "cpu", "--rounds", "2"])
    cells = [(0, 1, 50000, "mv"), (0, 1, 50000, "wmv"), (0, 3, 16666, "mbem"), (0, 3, 16666, "crowdlab")]
    never, always = (lambda s, r, n: False), (lambda s, r, n: True)
    assert settings.trainings(config, cells[0], cells, never) == [1.0]
    assert settings.trainings(config, cells[1], cells, never) == []
    assert settings.trainings(config, cells[2], cells, never) == [1.0] * 3  # two rounds and the bootstrap
    assert settings.trainings(config, cells[2], cells, always) == [1.0] * 2
    assert settings.trainings(config, cells[2], cells + [(0, 3, 16666, "wmv")], never) == [1.0] * 2
    assert settings.trainings(config, cells[3], cells, never) == [0.5, 0.5, 1.0]
    shorter, _, _ = settings.parse(["--preset", "cpu", "--epochs", "20", "--bootstrap-epochs", "5"])
    assert settings.trainings(shorter, cells[2], cells, never) == [1.0, 0.25]  # its round, a quarter-length bootstrap
    assert settings.trainings(shorter, cells[2], cells, always) == [1.0]


@pytest.mark.slow
def test_a_shorter_bootstrap_trains_the_wmv_model_for_its_own_epochs(tmp_path):
    """--bootstrap-epochs: MBEM's WMV model trains for its epochs, MBEM's own training for --epochs
    (the docs' 10-epoch bootstrap and 20-epoch final training), and the dry run counts both."""
    out = tmp_path / "short"
    args = ("--preset", "smoke", "--backend", "torch", "--no-compile", "--algorithms", "mbem", "--redundancy", "1",
            "--epochs", "3", "--bootstrap-epochs", "1", "--out", out)
    dry = run(*args, "--dry-run", "--speed", "1000")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "of 3 epochs (MBEM's WMV model 1): 4,800 training images" in dry.stdout  # 600 items, 2 stages, 3 + 1 epochs
    result = run(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    log = (out / "train.log").read_text().splitlines()
    wmv = [line for line in log if " wmv stage " in line]
    mbem = [line for line in log if " mbem round 1 stage " in line]
    assert len(wmv) == 2 and all(" epoch 1/1 " in line for line in wmv)  # two stages of one epoch
    assert len(mbem) == 6 and all(re.search(r" epoch [123]/3 ", line) for line in mbem)
    (cell,) = json.loads((out / "results.json").read_text())["cells"]
    assert cell["epochs"] == 6 and (out / "bootstrap" / "wmv-seed0-r1-n600.npz").exists()


@pytest.mark.slow
def test_dry_run_counts_cells_and_trainings_and_writes_nothing(tmp_path):
    result = run(*TORCH_SMOKE, "--out", tmp_path / "x", "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "settings: dataset=digits" in result.stdout and "  cell seed 0 r 3 n 200 mbem" in result.stdout
    # r = 1: MV and WMV one model, MBEM one, clean one; r = 3: four; two stages each
    # images: (3 x 600 + 4 x 200) a stage-epoch, x 10 epochs x 2 stages
    assert "8 cells, at most 14 trainings (2 stages each) of 10 epochs: 52,000 training images" in result.stdout
    assert "img/s (3 timed batches of 50 here, fp32) about " in result.stdout
    assert not (tmp_path / "x").exists()
    given = run(*TORCH_SMOKE, "--out", tmp_path / "x", "--dry-run", "--speed", "2600")  # 52,000 images: 20 s
    assert "at 2600 img/s (given by --speed) about 20 s, evaluation not counted" in given.stdout, given.stderr[-2000:]


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_result(torch_smoke, tmp_path):
    """SIGKILL after the WMV cell at r = 1, then the same command: the finished cells are kept,
    MBEM bootstraps from the WMV predictions saved beside results.json (no retrained WMV model),
    and every number equals the uninterrupted run's (the torch backend is deterministic on the
    CPU; MXNet's oneDNN is not, see docs/backends.md)."""
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, SCRIPT, *TORCH_SMOKE, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = out / "results.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(json.loads(path.read_text())["cells"]) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    kept = json.loads(path.read_text())["cells"]
    assert proc.returncode == -signal.SIGKILL and [c["algorithm"] for c in kept[:2]] == ["mv", "wmv"]
    assert len(kept) < 2 * 4
    result = run(*TORCH_SMOKE, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{2 * 4 - len(kept)} of {2 * 4} cells to run" in result.stdout
    assert "seed 0 r 1 mbem: bootstrapped from the saved WMV predictions" in result.stdout
    resumed = json.loads(path.read_text())["cells"]
    assert resumed[:len(kept)] == kept
    uninterrupted = json.loads((torch_smoke / "results.json").read_text())["cells"]
    assert [untimed(c) for c in resumed] == [untimed(c) for c in uninterrupted]


@pytest.mark.slow
def test_one_folder_one_precision(torch_smoke, tmp_path):
    """Cells made in fp32 take no bf16 cells (refused before any training, whatever this CPU has),
    and a folder whose config says auto is resumed by the precision its cells were made in."""
    out = tmp_path / "fp32"
    shutil.copytree(torch_smoke, out)
    results = json.loads((out / "results.json").read_text())
    results["config"]["precision"] = "auto"  # what the committed folders made before --precision was fixed say
    (out / "results.json").write_text(json.dumps(results))
    cells = len(results["cells"])
    refused = run(*TORCH_SMOKE, "--out", out, "--precision", "bf16")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert ("holds fp32 cells and this run trains in bf16: pass --precision fp32" in refused.stderr
            or "no native bf16" in refused.stderr)
    resumed = run(*TORCH_SMOKE, "--out", out, "--precision", "fp32")
    assert resumed.returncode == 0 and "are done" in resumed.stdout
    assert len(json.loads((out / "results.json").read_text())["cells"]) == cells


def test_the_precision_check_names_both_precisions():
    results = {"config": {"out": "results/x"}, "cells": [{"precision": "fp32"}, {"precision": "fp32"}]}
    assert store.precision_problem(results, "fp32") is None
    assert store.precision_problem({"config": {"out": "x"}, "cells": []}, "bf16") is None
    assert "holds fp32 cells and this run trains in bf16: pass --precision fp32" in \
        store.precision_problem(results, "bf16")
    mixed = {"config": {"out": "x"}, "cells": [{"precision": "fp32"}, {"precision": "bf16"}]}
    assert "holds bf16 and fp32 cells" in store.precision_problem(mixed, "bf16")


def test_the_machine_names_the_cpu_flags_that_matter():
    text = "processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 sha_ni\n"
    assert store.cpu_info(text) == ("AMD EPYC 9B14", ["avx2", "avx512f", "avx512_bf16"])
    assert store.cpu_info("flags : sse2 avx2 amx_bf16\n") == (None, ["avx2", "amx_bf16"])
    assert store.cpu_info("") == (None, [])
    assert set(store.machine()) == {"cpu", "cpu_flags", "cores"}


@pytest.mark.slow
def test_a_run_killed_mid_training_resumes_at_its_last_epoch(torch_smoke, tmp_path):
    """SIGKILL while a training has a checkpoint on disk: the same command resumes that training at
    its epoch (saying so) rather than from the first, and every cell equals the uninterrupted run's."""
    out = tmp_path / "mid"
    proc = subprocess.Popen([sys.executable, SCRIPT, *TORCH_SMOKE, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(not p.name.startswith(".") for p in (out / "checkpoints").glob("*.ckpt")):  # not a temporary
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    result = run(*TORCH_SMOKE, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ": resumed after epoch " in result.stdout + result.stderr
    assert not list((out / "checkpoints").glob("*.ckpt"))
    resumed = json.loads((out / "results.json").read_text())["cells"]
    uninterrupted = json.loads((torch_smoke / "results.json").read_text())["cells"]
    assert [untimed(c) for c in resumed] == [untimed(c) for c in uninterrupted]


@pytest.mark.slow
def test_a_sweep_killed_again_and_again_at_random_moments_ends_as_an_uninterrupted_one(torch_smoke, tmp_path):
    """SIGKILL at random moments (in training, while results.json, a bootstrap, a model or a
    checkpoint is written), the same command after each: the sweep ends with every cell equal to
    the uninterrupted run's, test errors exactly, and no checkpoint left."""
    out, rng, kills = tmp_path / "faults", np.random.default_rng(7), 0
    for attempt in range(9):  # eight random kills (if the sweep lasts that long), then to the end
        proc = subprocess.Popen([sys.executable, SCRIPT, *TORCH_SMOKE, "--out", str(out)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            proc.wait(timeout=None if attempt == 8 else rng.uniform(2.5, 6.0))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        stderr = proc.communicate()[1]
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, stderr[-2000:]
    assert proc.returncode == 0 and kills >= 2, stderr[-2000:]
    resumed = json.loads((out / "results.json").read_text())["cells"]
    uninterrupted = json.loads((torch_smoke / "results.json").read_text())["cells"]
    assert [untimed(c) for c in resumed] == [untimed(c) for c in uninterrupted]
    # a write killed half-way leaves its temporary file (nothing can remove it), never a half file under the real name
    left = [p for p in out.rglob("*.ckpt") if not p.name.startswith(".tmp-")]
    assert not left, left


def untimed(cell):
    """A cell without what the clock measured (its seconds and speeds, its epochs' too)."""
    clock = ("wall_seconds", "train_img_per_s", "seconds", "img_per_s")
    kept = {k: v for k, v in cell.items() if k not in (*clock, "machine")}
    kept["history"] = [{k: v for k, v in h.items() if k not in clock} for h in cell["history"]]
    return kept


@pytest.mark.slow
def test_a_corrupt_or_foreign_results_file_is_named_and_kept(tmp_path):
    for text in ('{"config": {', '["not", "ours"]', '{"config": {}, "cells": 3}'):
        out = tmp_path / "x"
        out.mkdir(exist_ok=True)
        (out / "results.json").write_text(text)
        result = run("--preset", "smoke", "--backend", "torch", "--out", out)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "is not a results file of MBEM.py" in result.stderr and "use another --out" in result.stderr
        assert (out / "results.json").read_text() == text


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", pytest.param("mxnet", marks=needs_mxnet)])
def test_release_loop_settings_run_and_are_recorded(tmp_path, backend):
    """--epoch-images all, --no-shuffle and --predict-augmented on both backends: the run's
    epochs then count every training image, and the settings land in results.json."""
    out = tmp_path / backend
    result = run("--preset", "smoke", "--backend", backend, "--no-compile", "--algorithms", "wmv,mbem",
                 "--redundancy", "1", "--budget", "300", "--epochs", "2", "--epoch-images", "all", "--no-shuffle",
                 "--predict-augmented", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    config = results["config"]
    assert (config["epoch_images"], config["shuffle"], config["predict_augmented"]) == ("all", False, True)
    assert [c["algorithm"] for c in results["cells"]] == ["wmv", "mbem"]
    assert os.path.exists(out / "bootstrap" / "wmv-seed0-r1-n300.npz")


def test_presets_choose_the_release_loop_only_for_paper():
    paper, _, _ = settings.parse([])
    assert (paper.epoch_images, paper.shuffle, paper.predict_augmented) == ("all", False, True)
    for preset in ("cpu", "cpu-mxnet", "smoke", "demo"):
        config, _, _ = settings.parse(["--preset", preset])
        assert (config.epoch_images, config.shuffle, config.predict_augmented) == ("labelled", True, False)
    cpu, _, _ = settings.parse(["--preset", "cpu"])
    assert (cpu.backend, cpu.precision, cpu.depth, cpu.budget, cpu.epochs) == ("torch", "auto", 20, 50000, 10)
    assert settings.plan(cpu) == [[1, 50000], [3, 16666], [5, 10000]]


def test_torch_backend_without_torch_says_how_to_install(tmp_path):
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named torch (simulated)')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    result = run_script("MBEM.py", "--preset", "smoke", "--backend", "torch", "--out", tmp_path / "x", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "needs PyTorch" in result.stderr and "pip install torch" in result.stderr


def test_mxnet_refuses_bf16(tmp_path):
    result = run("--preset", "smoke", "--precision", "bf16", "--out", tmp_path / "x")
    assert result.returncode == 2 and "is for --backend torch" in result.stderr


@pytest.mark.slow
def test_data_parallel_with_torchrun_on_two_cpu_processes(tmp_path):
    """DistributedDataParallel exercised on this CPU: torchrun, 2 processes, gloo. Only rank 0
    writes, and the results have the form of a one-process run."""
    out = tmp_path / "ddp"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             SCRIPT, "--preset", "smoke", "--backend", "torch", "--no-compile", "--algorithms",
                             "mv,wmv,mbem", "--out", out], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [(c["redundancy"], c["algorithm"]) for c in results["cells"]] == [
        (1, "mv"), (1, "wmv"), (1, "mbem"), (3, "mv"), (3, "wmv"), (3, "mbem")]
    assert result.stdout.count("cells to run") == 1 and result.stdout.count("seed 0 r 1 n 600 mv:") == 1
    for cell in results["cells"]:
        assert 0 <= cell["test_error"] <= 1 and set(CSV_KEYS) <= set(cell)


CSV_KEYS = ["redundancy", "n", "algorithm", "seed", "test_error", "label_accuracy", "epochs", "backend", "precision"]


@pytest.mark.slow
def test_a_full_disk_stops_with_one_line_and_keeps_the_finished_cells(tmp_path, monkeypatch):
    writes = []

    def fill_up(path, obj):
        writes.append(path)
        if len(writes) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        real_write_json(path, obj)

    real_write_json = store.write_json
    monkeypatch.setattr(store, "write_json", fill_up)
    out = tmp_path / "full"
    with pytest.raises(RunError, match="No space left on device.*cells finished before this one are saved"):
        MBEM.main(["--preset", "smoke", "--backend", "torch", "--no-compile", "--algorithms", "mv", "--epochs", "1",
                   "--out", str(out)])
    assert len(json.loads((out / "results.json").read_text())["cells"]) == 1
    kept = [".mbem.lock", "models", "predictions", "results.json", "train.log"]
    assert sorted(os.listdir(out)) == kept  # no temporary file left


def test_a_read_only_output_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root may write anywhere: simulate
    with pytest.raises(SystemExit) as stop:
        MBEM.main(["--preset", "smoke", "--out", str(tmp_path / "new" / "out")])
    assert stop.value.code == 2 and not (tmp_path / "new").exists()


@pytest.mark.slow
def test_mbem_alone_keeps_the_wmv_predictions_it_trained(tmp_path):
    """MBEM without WMV trains and saves the bootstrap model itself; with --rounds 2 the cell
    records each round's targets (their accuracy and the largest class's share), the last
    round's being the cell's own."""
    out = tmp_path / "alone"
    result = run("--preset", "smoke", "--backend", "torch", "--no-compile", "--algorithms", "mbem", "--redundancy",
                 "1", "--epochs", "1", "--rounds", "2", "--class-prior", "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    probs = store.bootstrap_probabilities(out / "bootstrap" / "wmv-seed0-r1-n600.npz")
    with np.load(out / "bootstrap" / "wmv-seed0-r1-n600.npz") as saved:  # the argmax MBEM starts from, and more
        assert probs.shape == (600, 10) and np.allclose(probs.sum(axis=1), 1, atol=0.01)
        assert np.array_equal(saved["predicted"], probs.argmax(axis=1)) or \
            (probs.max(axis=1) - np.take_along_axis(probs, saved["predicted"][:, None], 1)[:, 0]).max() < 1e-3
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert [c["algorithm"] for c in cells] == ["mbem"]
    rounds = cells[0]["rounds"]
    assert len(rounds) == 2 and rounds[-1]["label_accuracy"] == cells[0]["label_accuracy"]
    assert all(0 < r["label_accuracy"] <= 1 and 0.1 <= r["top_class_share"] <= 1 for r in rounds)  # K = 10


@pytest.mark.slow
def test_targets_within_float32_rounding_reuse_the_trained_model(monkeypatch):
    """Label-only EM at r = 1 on many items ends within 1e-10 of majority vote's one-hot rows: the
    same float32 targets, so the cell reuses MV's model instead of a second full training. A real
    difference, another seed or other items train anew."""
    config = settings.preset("smoke", backend="torch", compile=False, epochs=1, two_stage=False, select_epoch="last")
    experiment = MBEM.Experiment(config, MBEM.load_images(config))
    calls = []
    train = experiment.trainer.train
    monkeypatch.setattr(experiment.trainer, "train", lambda *a, **k: calls.append(1) or train(*a, **k))
    items = experiment.pool[:100]
    targets = np.eye(10)[experiment.ds.train_labels[items]]
    first = experiment.fit(targets, items, 0, "mv")
    near = np.abs(targets - 3.6e-11)  # EM's rows at r = 1: 1 - 3.6e-11 and 3.6e-11 where MV has 1 and 0
    assert experiment.fit(near, items, 0, "em") is first and len(calls) == 1
    experiment.fit(0.99 * targets + 0.001, items, 0, "soft")  # a real difference
    experiment.fit(targets, items, 1, "mv")  # another seed
    experiment.fit(targets[:50], items[:50], 0, "mv")  # other items
    assert len(calls) == 4


def test_without_mxnet_the_default_backend_says_what_to_do(tmp_path, monkeypatch, capsys):
    """The torch-only environment: a run that needs MXNet (the default backend) is one line."""
    monkeypatch.setattr(settings, "find_spec", lambda name: None if name == "mxnet" else object())
    with pytest.raises(SystemExit) as stop:
        MBEM.main(["--preset", "smoke", "--out", str(tmp_path / "x")])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "needs MXNet 1.9.1" in error and "--backend torch" in error
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flags, message", [
    (["--seeds", "1,1,2"], "--seeds 1,1,2: a seed given twice"),
    (["--annotations", "README.md", "--gamma", "0.3", "--workers", "9"], "--gamma, --workers: for simulated workers"),
    (["--image-size", "64"], "--image-size: for --dataset imagenet's streamed images only"),
    (["--loader-workers", "4", "--dataset", "digits"], "--loader-workers: for --dataset imagenet"),
    (["--out", "/proc/mbem-test"], "--out /proc/mbem-test: cannot write there"),
    (["--algorithms", "mv,wmv", "--bootstrap-epochs", "2"], "--bootstrap-epochs: for --algorithms mbem only"),
    (["--algorithms", "wmv,mbem", "--epochs", "3", "--bootstrap-epochs", "2"],
     "--bootstrap-epochs 2: MBEM starts from the WMV cell's model, trained for --epochs 3"),
])
def test_flags_that_cannot_act_are_refused_before_any_work(tmp_path, flags, message, capsys):
    args = ["--preset", "smoke", "--backend", "torch", "--out", str(tmp_path / "x"), *flags]
    try:
        status = MBEM.command(args)
    except SystemExit as stop:
        status = stop.code
    stderr = capsys.readouterr().err
    assert status == 2 and message in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists() and not os.path.exists("/proc/mbem-test")


@pytest.mark.skipif(__import__("torch").cuda.device_count() > 0, reason="this machine has a GPU")
@pytest.mark.parametrize("backend", ["torch", pytest.param("mxnet", marks=needs_mxnet)])
def test_gpus_on_a_machine_without_them_is_one_line(tmp_path, backend, capsys):
    for gpus in ("0", "0,1"):
        with pytest.raises(SystemExit) as stop:
            MBEM.main(["--preset", "smoke", "--backend", backend, "--gpus", gpus, "--out", str(tmp_path / "x")])
        assert stop.value.code == 2 and f"--gpus {gpus}: {backend} sees no GPUs here" in capsys.readouterr().err


def test_several_gpus_on_torch_need_torchrun(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(MBEM, "gpu_count", lambda backend: 2)  # as on a machine with two GPUs
    with pytest.raises(SystemExit):
        MBEM.main(["--preset", "smoke", "--backend", "torch", "--gpus", "0,1", "--out", str(tmp_path / "x")])
    assert "torchrun --nproc_per_node 2 MBEM.py ... --gpus 0,1" in capsys.readouterr().err


@pytest.mark.slow
def test_resuming_after_the_trainer_changed_says_so(tmp_path):
    first = subprocess.run(["git", "rev-list", "--max-parents=0", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    if first.returncode:
        pytest.skip("not a git checkout")
    out = tmp_path / "run"
    args = ["--preset", "smoke", "--backend", "torch", "--no-compile", "--redundancy", "1,2", "--epochs", "1",
            "--algorithms", "mv", "--out", out]
    assert run(*args).returncode == 0
    results = json.loads((out / "results.json").read_text())
    results["cells"] = results["cells"][:1]  # the r = 2 cell still to run
    (out / "results.json").write_text(json.dumps(results))
    if store.trainer_changes(results["commit"]) == []:  # the same commit, no edits since: nothing to say
        assert "warning" not in run(*args).stderr
        (out / "results.json").write_text(json.dumps(results))
    results["commit"] = first.stdout.split()[0]  # the project's first commit: another trainer
    (out / "results.json").write_text(json.dumps(results))
    result = run(*args)
    assert result.returncode == 0 and "the trainer has changed since (" in result.stderr
    assert "pipeline.py" in result.stderr and "may not compare with the saved ones" in result.stderr
    finished = run(*args)  # a finished folder has nothing to add, so nothing to warn about
    assert "all 2 cells" in finished.stdout and "warning" not in finished.stderr


@pytest.mark.skipif(__import__("resnet_torch").native_bf16(__import__("torch").device("cpu")),
                    reason="this CPU computes bf16")
def test_bf16_on_a_cpu_without_it_is_refused_before_the_data_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dataset, "load", lambda config: pytest.fail("the data was loaded"))
    with pytest.raises(SystemExit) as stop:
        MBEM.main(["--preset", "smoke", "--backend", "torch", "--precision", "bf16", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--precision bf16: this CPU" in err and "no native bf16" in err


def test_a_folder_in_use_is_refused_in_one_line_and_a_dead_runs_lock_is_taken_over(tmp_path):
    """The hold is the kernel's flock: a second run is refused naming the first (here this test's
    process), writing nothing; once the holder is gone (killed, so its name stays in the file)
    the next run takes the folder over and says so."""
    out = tmp_path / "x"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mbemlib import store; "
                               "store.hold(sys.argv[1]); print('held', flush=True); time.sleep(60)", str(out)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        refused = run(*TORCH_SMOKE, "--out", out)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert f"is in use by another run (process {holder.pid} on " in refused.stderr
        assert f": python -c {out})" in refused.stderr and "use another --out" in refused.stderr
        assert os.listdir(out) == [store.LOCK]
        with pytest.raises(RunError, match="in use by another run"):  # in-process too
            store.hold(str(out))
        assert store.in_use(str(out)).startswith(f"process {holder.pid} on ")  # read without the lock
    finally:
        holder.kill()
        holder.wait()
    assert store.in_use(str(out)) is None and store.LOCK in os.listdir(out)  # a killed run's name holds nothing
    assert store.hold(str(out)).startswith(f"note: {out} was left by a run that did not finish (process {holder.pid}")
    assert store.hold(str(tmp_path / "fresh")) is None


def test_mbem_rounds_each_train_on_the_last_models_step():
    """Algorithm 1 with a stand-in trainer: each round's targets are the M-/E-step of the previous
    model's predictions (the bootstrap's first), `rounds` trainings in all, and the corrected steps
    in place of the release's when asked."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 10, 3000)
    workers = noise_sim.simulate_workers(50, 10, 0.2, rng)
    ann = agg.Annotations(*noise_sim.simulate_labels(truth, workers, 1, rng), 3000, 50, 10)
    bootstrap = np.where(rng.random(3000) < 0.5, truth, rng.integers(0, 10, 3000))
    seen = []

    def train(posterior, t):  # a "model" whose predictions are its targets, a little sharpened
        seen.append(posterior)
        return MBEM.Trained(posterior ** 2 / (posterior ** 2).sum(axis=1, keepdims=True), None, [], None)

    for step, expected in (("release", agg.mbem_step), ("one-coin", agg.one_coin_step),
                           ("per-class-coin", agg.per_class_coin_step)):
        seen.clear()
        targets, confusions, result, posteriors = MBEM.mbem(ann, bootstrap, train, rounds=3, step=step)
        assert len(seen) == 3 and all(a is b for a, b in zip(seen, posteriors, strict=True))
        assert np.allclose(seen[0], expected(ann, agg.one_hot(bootstrap, 10))[0])
        assert np.allclose(seen[2], expected(ann, seen[1] ** 2 / (seen[1] ** 2).sum(axis=1, keepdims=True))[0])
        assert targets is seen[2] and confusions.shape == (50, 10, 10)


def test_help_shows_the_chosen_presets_defaults_as_flags_take_them(capsys):
    for argv, expected in ((["--help"], ["(default: 13:4000,7:7000,5:10000,3:17000,1:50000)", "(default: mv,wmv,mbem)",
                                         "the defaults shown are the paper preset's"]),
                           (["--preset", "demo", "--help"], ["the defaults shown are the demo preset's",
                                                             "(default: 1,2,4)"])):
        with pytest.raises(SystemExit):
            settings.parse(argv, "x")
        shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
        assert all(e in shown for e in expected), expected
        assert "['" not in shown and "[[" not in shown
        assert "(default: on)" in shown and "(default: off)" in shown


def test_a_folder_that_cannot_be_locked_runs_with_a_warning(tmp_path, monkeypatch):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(store.fcntl, "flock", no_locks)
    note = store.hold(str(tmp_path / "x"))
    assert note.startswith("warning: ") and "cannot be locked here (No locks available)" in note
