"""report.py: paired statistics by hand, the worker-accuracy figure's data, the files it writes."""

import csv
import math

import numpy as np
import pytest

from mbemlib import report


def cell(algorithm, r, seed, error, **extra):
    return dict({"algorithm": algorithm, "redundancy": r, "seed": seed, "n": 100 // r, "test_error": error}, **extra)


CELLS = [cell("wmv", 1, s, e) for s, e in zip((0, 1, 2), (0.50, 0.40, 0.30), strict=True)] + \
        [cell("mbem", 1, s, e) for s, e in zip((0, 1, 2), (0.40, 0.35, 0.33), strict=True)] + \
        [cell("wmv", 3, 0, 0.6), cell("mbem", 3, 0, 0.55), cell("mbem", 3, 1, 0.5)]  # seed 1 has no WMV at r = 3


def test_paired_differences_by_hand():
    d = report.paired(CELLS, "mbem", "wmv")
    # r = 1: differences -0.10, -0.05, +0.03; mean -0.04; sd sqrt((0.06^2 + 0.01^2 + 0.07^2) / 2) = sqrt(0.0043);
    # t(0.975, 2 df) = 4.302653; half width 4.302653 * sqrt(0.0043) / sqrt(3) = 0.162896.
    assert d[1]["differences"] == pytest.approx([-0.10, -0.05, 0.03])
    assert d[1]["mean"] == pytest.approx(-0.04)
    half = 4.302653 * math.sqrt(0.0043) / math.sqrt(3)
    assert half == pytest.approx(0.162896, abs=1e-6)
    assert d[1]["ci_low"] == pytest.approx(-0.04 - half, abs=1e-6)
    assert d[1]["ci_high"] == pytest.approx(-0.04 + half, abs=1e-6)
    assert d[1]["wins"] == 2
    # r = 3: only seed 0 has both; one seed gives no interval
    assert d[3]["seeds"] == [0] and d[3]["mean"] == pytest.approx(-0.05) and d[3]["ci_low"] is None


def test_paired_rows_cover_each_baseline_that_ran():
    rows = report.paired_rows(CELLS + [cell("mv", 1, 0, 0.45)])
    assert [(r["redundancy"], r["comparison"], r["seeds"]) for r in rows] == [
        (1, "mbem - wmv", 3), (3, "mbem - wmv", 1), (1, "mbem - mv", 1)]
    assert rows[0]["differences"] == "-0.1000 -0.0500 +0.0300" and rows[0]["mbem_wins"] == 2


def test_worker_points_pool_seeds_and_skip_workers_without_labels():
    cells = [cell("mbem", 1, 0, 0.4, worker_accuracy=[0.9, None, 0.2], worker_accuracy_true=[1.0, None, 0.1]),
             cell("mbem", 1, 1, 0.4, worker_accuracy=[0.5, 0.6], worker_accuracy_true=[0.4, 1.0]),
             cell("em", 1, 0, 0.4, worker_accuracy=[0.7], worker_accuracy_true=[0.1])]
    est, true = report.worker_points(cells, "mbem", 1)
    assert est.tolist() == [0.9, 0.2, 0.5, 0.6] and true.tolist() == [1.0, 0.1, 0.4, 1.0]
    assert report.worker_points(cells, "mbem", 3)[0].size == 0


def test_report_writes_every_file(tmp_path, capsys):
    cells = [dict(c, worker_accuracy=[0.5, 0.9], worker_accuracy_true=[0.1, 1.0]) for c in CELLS]
    config = {"dataset": "digits", "source": None, "workers": 2, "worker_model": "hammer-spammer", "gamma": 0.2,
              "depth": 8, "epochs": 1, "seeds": [0, 1, 2]}
    report.report({"config": config, "cells": cells}, str(tmp_path))
    for name in ("results.csv", "paired.csv", "redundancy.csv", "error_vs_redundancy.png", "worker_accuracy.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "worker_accuracy.png").read_bytes().startswith(b"\x89PNG")
    with open(tmp_path / "paired.csv") as f:
        assert [row["comparison"] for row in csv.DictReader(f)] == ["mbem - wmv", "mbem - wmv"]
    printed = capsys.readouterr().out
    assert "MBEM won 2 of 3" in printed and "95% CI" in printed
    assert "mbem r=1 - wmv r=3" in printed and "worker accuracy, estimated against true" in printed


def test_trained_with_names_a_mix_of_precisions():
    same = [cell("wmv", 1, s, 0.5, backend="torch", precision="fp32") for s in (0, 1)]
    assert report.trained_with(same) == "trained with torch fp32: 2 cells"
    mixed = same + [cell("mbem", 1, 0, 0.4, backend="torch", precision="bf16")]
    assert report.trained_with(mixed) == ("trained with torch bf16: 1 cell, torch fp32: 2 cells"
                                          "  (mixed: compare cells of one kind)")


def test_title_counts_the_seeds_the_cells_hold():
    config = {"source": "data/cifar10-jpeg.tar.gz", "dataset": "folder", "workers": 100, "gamma": 0.2,
              "worker_model": "hammer-spammer", "depth": 20, "epochs": 10, "seeds": [0, 1, 2]}
    assert report.title(config, CELLS).endswith("ResNet-20, 10 epochs, 3 seeds")
    assert report.title(config, CELLS[:1]).endswith("10 epochs, 1 of 3 seeds")
    assert report.title(config, CELLS[:1]).startswith("cifar10-jpeg: 100 hammer-spammer workers, gamma 0.2")


def test_redundancy_rows_pair_each_algorithm_with_itself_and_mbem_with_every_crowd_algorithm():
    cells = CELLS + [cell("clean", 1, 0, 0.20), cell("clean", 3, 0, 0.30), cell("mv", 3, 0, 0.7)]
    rows = {row["comparison"]: row for row in report.redundancy_rows(cells)}
    assert sorted(rows) == ["clean r=1 - clean r=3", "mbem r=1 - mbem r=3", "mbem r=1 - mv r=3",
                            "mbem r=1 - wmv r=3", "wmv r=1 - wmv r=3"]
    # MBEM at r = 1 (0.40, 0.35) against MBEM at r = 3 (0.55, 0.50): -0.15 on both seeds
    assert rows["mbem r=1 - mbem r=3"]["differences"] == "-0.1500 -0.1500"
    assert rows["mbem r=1 - mbem r=3"]["smaller_r_wins"] == 2 and rows["mbem r=1 - mbem r=3"]["ci_low"] == \
        pytest.approx(-0.15)
    assert rows["mbem r=1 - wmv r=3"]["seeds"] == 1 and rows["mbem r=1 - wmv r=3"]["mean"] == pytest.approx(-0.2)
    assert rows["clean r=1 - clean r=3"]["mean"] == pytest.approx(-0.1)
    assert report.redundancy_rows([c for c in CELLS if c["redundancy"] == 1]) == []


def test_worker_rows_by_hand_and_no_correlation_from_constant_estimates():
    cells = [cell("mbem", 1, 0, 0.4, worker_accuracy=[0.9, None, 0.2], worker_accuracy_true=[1.0, None, 0.1]),
             cell("mbem", 1, 1, 0.4, worker_accuracy=[0.5, 0.6], worker_accuracy_true=[0.4, 1.0]),
             cell("wmv", 1, 0, 0.4, worker_accuracy=[1.0, 1.0], worker_accuracy_true=[0.3, 0.8])]
    rows = report.worker_rows(cells)
    assert [(r["algorithm"], r["redundancy"], r["points"]) for r in rows] == [("mbem", 1, 4), ("wmv", 1, 2)]
    mbem, wmv = rows
    assert mbem["mean_estimate"] == pytest.approx(0.55) and mbem["mean_true"] == pytest.approx(0.625)
    assert mbem["mae"] == pytest.approx((0.1 + 0.1 + 0.1 + 0.4) / 4)
    # Pearson by hand: deviations (0.35, -0.35, -0.05, 0.05) and (0.375, -0.525, -0.225, 0.375)
    est, true = [0.35, -0.35, -0.05, 0.05], [0.375, -0.525, -0.225, 0.375]
    covariance = sum(a * b for a, b in zip(est, true, strict=True))
    r = covariance / math.sqrt(sum(a * a for a in est) * sum(b * b for b in true))
    assert mbem["correlation"] == pytest.approx(r)
    assert wmv["correlation"] is None and wmv["mae"] == pytest.approx(0.45)
    printed = report.format_workers(rows, real=True)
    assert "empirical" in printed and printed.splitlines()[-1].split()[-1] == "-"


def test_spreads_are_the_sample_standard_deviation():
    """One convention everywhere: n - 1 over the seeds (0.1 here, where the population std is 0.082);
    a single seed has no spread and prints none."""
    assert report.spread([0.4, 0.5, 0.6]) == pytest.approx(0.1)
    assert math.isnan(report.spread([0.4]))
    cells = [{"algorithm": "mv", "redundancy": 1, "seed": s, "test_error": e} for s, e in enumerate([0.4, 0.5, 0.6])]
    assert "0.500 +- 0.100" in report.format_table({"cells": cells})
    one = report.format_table({"cells": cells[:1]})
    assert "test_error, one seed" in one and "0.400" in one and "+-" not in one


def test_selected_val_error_reads_the_final_stage():
    history = [{"stage": 1, "val_acc": 0.9}, {"stage": 2, "val_acc": 0.5}, {"stage": 2, "val_acc": 0.6}]
    assert report.selected_val_error(history, "val") == pytest.approx(0.4)
    assert report.selected_val_error([dict(h, val_acc=0.5) for h in history[:1]], "last") == pytest.approx(0.5)
    assert report.selected_val_error([{"stage": 1}], "last") is None


def test_top_k_error():
    probs = np.array([[0.1, 0.5, 0.4], [0.6, 0.3, 0.1]])
    assert report.top_k_error(probs, np.array([2, 0]), 1) == 0.5
    assert report.top_k_error(probs, np.array([2, 0]), 2) == 0.0


def test_the_paired_figure_names_baselines_that_shared_one_model(tmp_path):
    """MV and WMV at r = 1 trained one model (equal errors in every seed): the figure says so; at
    r = 3 they differ. The figure is written beside the others."""
    cells = [{"algorithm": a, "redundancy": r, "seed": s, "test_error": e}
             for s in range(3) for r, errors in ((1, {"mv": 0.5 + s / 100, "wmv": 0.5 + s / 100, "mbem": 0.45}),
                                                 (3, {"mv": 0.55, "wmv": 0.52 + s / 100, "mbem": 0.44 - s / 100}))
             for a, e in errors.items()]
    assert report.shared_models(cells, 1, ["wmv", "mv"]) == [["wmv", "mv"]]
    assert report.shared_models(cells, 3, ["wmv", "mv"]) == []
    config = {"dataset": "digits", "seeds": [0, 1, 2], "workers": 20, "worker_model": "hammer-spammer",
              "gamma": 0.2, "depth": 8, "epochs": 10}
    assert report.plot_paired({"config": config, "cells": cells}, str(tmp_path))
    assert (tmp_path / "mbem_minus_baselines.png").stat().st_size > 5000
