"""bench/targets.py on results/cpu's saved bootstraps: the table docs/worker-estimates.md quotes."""

import pytest

from conftest import run_script, shared_path


def rows_at_r1(stdout):
    """estimator -> its seven scores, from the table's r = 1 lines."""
    return {" ".join(line.split()[1:-8]): [float(x) for x in line.split()[-7:]]
            for line in stdout.splitlines() if line.startswith(" 1 ")}


@pytest.mark.slow
def test_target_scores_of_results_cpu_at_r1():
    shared_path("cifar10-jpeg.tar.gz")
    result = run_script("bench/targets.py", "results/cpu", "--redundancy", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = rows_at_r1(result.stdout)
    assert rows["oracle"][1] == pytest.approx(0.2832, abs=1e-4)  # p_true, as the docs' table has it
    assert rows["mbem"][1] == pytest.approx(0.1931, abs=1e-4) and rows["one-coin"][1] == pytest.approx(0.2760, abs=1e-4)
    assert rows["one-coin"][5] < rows["mbem"][5] / 4  # worker MAE
    # worth in clean items per item (docs/planning.md): the oracle's, the release's MBEM step's, plan.py's stand-in's
    assert (rows["oracle"][6], rows["mbem"][6], rows["plan's mbem"][6]) == (pytest.approx(0.2036, abs=1e-4),
                                                                           pytest.approx(0.1477, abs=1e-4),
                                                                           pytest.approx(0.1664, abs=1e-4))
    assert "r 1 seed 2 model 0.554 rho 0.581" in result.stdout


@pytest.mark.slow
def test_target_scores_of_class_wise_workers_at_r1():
    """On class-wise workers one-coin's assumption fails (confidently wrong targets) and the
    per-class coin comes near the oracle: the table docs/worker-estimates.md quotes."""
    shared_path("cifar10-jpeg.tar.gz")
    result = run_script("bench/targets.py", "results/class-wise-gamma0.2", "--redundancy", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = rows_at_r1(result.stdout)
    assert rows["oracle"][1] == pytest.approx(0.2021, abs=1e-4) and rows["mbem"][1] == pytest.approx(0.1539, abs=1e-4)
    assert rows["per-class coin"][1] == pytest.approx(0.1986, abs=1e-4)  # p_true
    assert rows["one-coin"][4] == pytest.approx(0.2937, abs=1e-4)  # sure wrong
    assert rows["soft mbem"][1] == pytest.approx(0.1077, abs=1e-4)


def test_a_folder_of_real_labels_is_refused_in_one_line():
    result = run_script("bench/targets.py", "results/cifar10n")
    assert result.returncode == 2 and "real labels have no simulated truth" in result.stderr
