"""paper_figure.py on small hand-made results folders: the panels, the points, the claims."""

import csv
import json
import math

import pytest

import paper_figure
from conftest import run_script, shared_path

RS = (1, 3, 5)
SEEDS = (0, 1, 2)


def cells(error, mae=None):
    """Cells of every (seed, r, algorithm) with error(algorithm, r, seed), and a worker-accuracy
    MAE per algorithm at every r (mv none, as the runs write it)."""
    mae = mae or {"wmv": 0.5, "em": 0.7, "mbem": 0.1}
    return [{"seed": s, "redundancy": r, "n": 600 // r, "algorithm": a, "test_error": error(a, r, s),
             "worker_accuracy_mae": mae.get(a)} for s in SEEDS for r in RS for a in paper_figure.ALGORITHMS]


def write_folder(root, name, worker_model, gamma, error, **config):
    folder = root / name
    folder.mkdir()
    conf = {"worker_model": worker_model, "gamma": gamma, "seeds": list(SEEDS), "epochs": 10, "out": str(folder),
            **config}
    (folder / "results.json").write_text(json.dumps({"config": conf, "cells": cells(error)}))
    return folder


def mbem_wins_at_r1(a, r, s):
    """MBEM 0.05 below every baseline at each r and seed; every error rises with r, except that
    label-only EM is best at r = 3 (as on CIFAR-10 with 20% hammers)."""
    base = 0.4 + 0.02 * r + 0.01 * s
    return {"mv": base + 0.05, "wmv": base + 0.05, "em": base + (0.1 if r == 1 else 0.0), "mbem": base}[a]


def write_paper(path):
    rows = [["panel", "worker_model", "gamma", "metric", "algorithm", "redundancy", "n", "test_error"]]
    for a, offset in (("mv", 0.1), ("wmv", 0.05), ("mbem", 0.0)):
        rows += [["2_hs", "hammer-spammer", "0.2", metric, a, r, 1200000 // r, 0.5 + offset + 0.01 * r + extra]
                 for r in (1, 2, 3) for metric, extra in (("top-1", 0.0), ("top-5", -0.3))]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_interval_is_the_t_interval_of_the_mean():
    mean, low, high = paper_figure.interval([0.4, 0.5, 0.6])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t_{0.975, 2} sd / sqrt(3)
    assert mean == pytest.approx(0.5) and low == pytest.approx(0.5 - half) and high == pytest.approx(0.5 + half)
    assert paper_figure.interval([0.3])[1:] == (None, None)  # one seed: no interval


def test_claims_on_a_hand_made_panel():
    claims = paper_figure.claims(cells(mbem_wins_at_r1))
    below, budget, workers = claims.values()
    assert below[0].startswith("yes") and len(below[1]) == 6  # MV and WMV, three r each
    assert all(d["mean"] == pytest.approx(-0.05) and d["wins"] == 3 for _, d in below[1])
    # every method rises with r (r = 1 minus r = 3 is -0.04), but EM's r = 1 is 0.06 above its r = 3
    assert budget[0] == "no (2 of 8 mean differences at or above 0)"
    em = dict(budget[1])["em r=1 - em r=3"]
    assert em["mean"] == pytest.approx(0.06) and em["wins"] == 0
    assert workers[0].startswith("yes") and dict(workers[1])["worker MAE MBEM - EM r=1"]["mean"] == pytest.approx(-0.6)


def test_a_noisy_difference_is_in_sign_only():
    noisy = paper_figure.claims(cells(lambda a, r, s: 0.5 + (0.0 if a != "mbem" else [-0.1, -0.1, 0.15][s])))
    # MBEM minus each baseline is -0.1, -0.1, +0.15 over the seeds: below 0 on average, not surely
    assert noisy["1. MBEM below MV and WMV at every r"][0].startswith("in sign only")
    assert paper_figure.verdict([{"mean": -0.1, "ci_low": -0.3, "ci_high": 0.1}]).startswith("in sign only")
    assert paper_figure.verdict([{"mean": -0.1, "ci_low": None, "ci_high": None}]).startswith("in sign only")
    assert paper_figure.verdict([]) == "not run"


def test_shape_of_the_papers_curves():
    curves = {"mv": {1: 0.54, 3: 0.68}, "wmv": {1: 0.54, 3: 0.62}, "mbem": {1: 0.47, 3: 0.57}}
    shape = paper_figure.shape(curves)
    assert shape["best_r"] == {"mv": 1, "wmv": 1, "mbem": 1} and shape["mbem_lowest_at"] == [1, 3]
    assert shape["lead_at_smallest_r"] == pytest.approx({"mv": 0.07, "wmv": 0.07})


def test_figure_csv_and_verdicts_from_hand_made_folders(tmp_path):
    hs = write_folder(tmp_path, "hs", "hammer-spammer", 0.2, mbem_wins_at_r1)
    cw = write_folder(tmp_path, "cw", "class-wise", 0.6, lambda a, r, s: 0.3 + 0.01 * r)
    paper = tmp_path / "paper.csv"
    write_paper(paper)
    out = tmp_path / "figure.png"
    result = run_script("paper_figure.py", hs, cw, "--paper", paper, "--out", out)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(b"\x89PNG")
    text = result.stdout
    assert "class-wise workers, gamma 0.2 (the release's 2_chs): no results folder" in text
    assert "claim 1. MBEM below MV and WMV at every r: yes" in text
    assert "claim 1. MBEM below MV and WMV at every r: no (6 of 6" in text  # the class-wise panel: all equal
    assert "ImageNet paper  best r: mv 1, wmv 1, mbem 1" in text
    with open(tmp_path / "figure.csv") as f:
        rows = list(csv.DictReader(f))
    ours = [r for r in rows if r["source"] == "ours, CIFAR-10"]
    assert len(ours) == 2 * len(RS) * 4 and len(rows) - len(ours) == 3 * 3  # the paper's top-1 only
    mv1 = next(r for r in ours if (r["worker_model"], r["algorithm"], r["redundancy"]) == ("hammer-spammer", "mv", "1"))
    mean, low, high = paper_figure.interval([mbem_wins_at_r1("mv", 1, s) for s in SEEDS])
    assert float(mv1["test_error"]) == pytest.approx(mean, abs=1e-5) and mv1["seeds"] == "3"
    assert (float(mv1["ci_low"]), float(mv1["ci_high"])) == pytest.approx((low, high), abs=1e-5)


def test_bad_folders_get_one_line(tmp_path):
    a = write_folder(tmp_path, "a", "hammer-spammer", 0.2, mbem_wins_at_r1)
    b = write_folder(tmp_path, "b", "hammer-spammer", 0.2, mbem_wins_at_r1)
    odd = write_folder(tmp_path, "odd", "hammer-spammer", 0.3, mbem_wins_at_r1)
    out = tmp_path / "f.png"
    for args, message in (([a, b], "a second folder for hammer-spammer, gamma 0.2"),
                          ([odd], "not one of the paper's four panels"),
                          ([tmp_path / "none"], "no results.json")):
        result = run_script("paper_figure.py", *args, "--out", out)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_panels_run_with_different_protocols_are_flagged(tmp_path):
    a = write_folder(tmp_path, "a", "hammer-spammer", 0.2, mbem_wins_at_r1)
    b = write_folder(tmp_path, "b", "class-wise", 0.2, mbem_wins_at_r1, epochs=20)
    result = run_script("paper_figure.py", a, b, "--paper", tmp_path / "none.csv", "--out", tmp_path / "f.png")
    assert result.returncode == 0
    assert "differ in epochs" in result.stdout and "the paper's row is left out" in result.stdout
    # precision alone is noted, not warned of: each panel's title names its own, and its shape holds
    c = write_folder(tmp_path, "c", "class-wise", 0.6, mbem_wins_at_r1)
    for folder, precision in ((a, "bf16"), (c, "fp32")):
        results = json.loads((folder / "results.json").read_text())
        results["cells"] = [{**cell, "precision": precision} for cell in results["cells"]]
        (folder / "results.json").write_text(json.dumps(results))
    result = run_script("paper_figure.py", a, c, "--paper", tmp_path / "none.csv", "--out", tmp_path / "g.png")
    assert result.returncode == 0 and "differ in precision" in result.stdout and "warning" not in result.stdout


def test_a_setting_added_since_a_folder_was_made_is_not_a_protocol_difference():
    # the first folders predate --mbem-step and say precision auto; their cells trained in bf16
    old = {"config": {"worker_model": "hammer-spammer", "gamma": 0.2, "epochs": 10, "precision": "auto",
                      "gpus": None}, "cells": [{"precision": "bf16"}]}
    new = {"config": {"worker_model": "class-wise", "gamma": 0.2, "epochs": 10, "precision": "bf16", "gpus": [],
                      "mbem_step": "release"}, "cells": [{"precision": "bf16"}]}
    assert paper_figure.protocol_differences({"a": old, "b": new}) == []
    fp32 = {"config": {**new["config"], "epochs": 20}, "cells": [{"precision": "fp32"}]}
    assert paper_figure.protocol_differences({"a": old, "b": new, "c": fp32}) == ["epochs", "precision"]


def test_the_shared_csv_holds_four_panels_where_mbem_is_lowest_and_r1_best():
    paper = paper_figure.read_paper(shared_path("paper-figure", "imagenet-figure.csv"))
    assert set(paper) == set(paper_figure.PANELS)
    for curves in paper.values():
        assert set(curves) == {"mv", "wmv", "mbem"} and all(len(by_r) == 6 for by_r in curves.values())
        shape = paper_figure.shape(curves)
        assert set(shape["best_r"].values()) == {1} and shape["mbem_lowest_at"] == [1, 2, 3, 5, 7, 9]


def test_the_verdict_table_names_each_panels_precision_and_nearest_difference(tmp_path):
    hs = write_folder(tmp_path, "hs", "hammer-spammer", 0.2, mbem_wins_at_r1, precision="auto")
    results = json.loads((hs / "results.json").read_text())
    for cell in results["cells"]:
        cell["precision"] = "bf16"  # what the cells trained in, where the config says auto
    panels = {("hammer-spammer", 0.2): results}
    header, rule, *rows = paper_figure.verdict_table(panels)
    assert header.count("| claim ") == 3 and rule == "|---|---|---|---|---|"
    assert rows[0].startswith(f"| hammer-spammer, gamma 0.2 | {hs} (3 seeds, bf16) | yes; nearest against: MBEM - ")
    # claim 2: label-only EM's r = 1 is 0.06 above its r = 3 and 0.02 above its r = 5 in every seed
    assert rows[0].split(" | ")[3] == "no (2 of 8 against); nearest against: em r=1 - em r=3 +0.0600 [+0.060, +0.060]"
    assert [r.split(" | ")[1] for r in rows[1:]] == ["not run"] * 3


def test_corrected_steps_are_drawn_beside_their_panel_and_checked_against_it(tmp_path):
    """MBEM with a corrected M-step: folders of one panel and step pool into one line (one folder
    per r, as they are made), its points go to the CSV, the claims stay the release's MBEM's; a
    folder of the release's step, of a panel not drawn, or of another protocol is one line."""
    hs = write_folder(tmp_path, "hs", "hammer-spammer", 0.2, mbem_wins_at_r1)

    def corrected(name, r, step="one-coin", **config):
        folder = write_folder(tmp_path, name, "hammer-spammer", 0.2, mbem_wins_at_r1, mbem_step=step, **config)
        results = json.loads((folder / "results.json").read_text())
        results["cells"] = [{"seed": s, "redundancy": r, "n": 600 // r, "algorithm": "mbem",
                             "test_error": 0.3 + 0.01 * r + 0.01 * s} for s in SEEDS]
        (folder / "results.json").write_text(json.dumps(results))
        return folder

    r1, r3 = corrected("coin-r1", 1), corrected("coin-r3", 3)
    out = tmp_path / "figure.png"
    result = run_script("paper_figure.py", hs, "--corrected", r1, r3, "--out", out, "--paper", tmp_path / "none.csv")
    assert result.returncode == 0, result.stderr
    line = "MBEM with a corrected M-step (beyond the paper): one-coin: r=1 0.3200 (3 seeds), r=3 0.3400 (3 seeds)"
    assert line in result.stdout
    assert "claim 1. MBEM below MV and WMV at every r: yes" in result.stdout  # the release's MBEM's, unchanged
    with open(tmp_path / "figure.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["algorithm"] == "mbem (one-coin)"]
    assert [(r["redundancy"], r["seeds"], r["test_error"]) for r in rows] == [("1", "3", "0.32"), ("3", "3", "0.34")]
    panels = paper_figure.read_panels([hs])
    for folder, message in ((corrected("release", 1, step="release"), "uses the release's M-step"),
                            (write_folder(tmp_path, "cw", "class-wise", 0.2, mbem_wins_at_r1, mbem_step="one-coin"),
                             "no panel here for class-wise workers with gamma 0.2"),
                            (corrected("longer", 1, epochs=20), "run with another epochs than")):
        with pytest.raises(paper_figure.InputError, match=message):
            paper_figure.read_corrected([folder], panels)
