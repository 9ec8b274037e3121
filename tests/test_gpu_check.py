"""bench/gpu_check.py, the command prepared for a lent GPU, run here as its CPU dry run: every step
prints its line, and the paper preset's r = 1 point writes a resumable results folder."""

import json

import pytest

from conftest import run_script, shared_path


@pytest.mark.slow
def test_gpu_check_runs_every_step_on_the_cpu(tmp_path):
    result = run_script("bench/gpu_check.py", tmp_path / "out", "--source", shared_path("cifar10-jpeg.tar.gz"),
                        "--minutes", "8")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("device: ") and "torch" in lines[0] and "numpy" in lines[0]
    assert any(line.startswith("tests/test_cuda.py:") for line in lines)
    assert any(" passed" in line and "failed" not in line for line in lines)
    assert any(line.startswith("input pipeline, batch 500") for line in lines)
    assert any(line.startswith("train img/s cpu: ") and " ratio: " in line for line in lines)
    results = json.loads((tmp_path / "out" / "dry-run" / "results.json").read_text())
    assert results["config"]["plan"] == [[1, 1000]] and results["config"]["two_stage"]
    assert [c["algorithm"] for c in results["cells"]] == ["mv", "wmv", "mbem"]
