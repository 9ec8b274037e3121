"""No committed number may move: every committed results folder's workers and labels are drawn again
by the current code, each seed and redundancy, and checked against what its cells recorded when
they ran: each simulated worker's true accuracy and, for the methods whose targets need no
trained model, the accuracy of the targets. A run resumed after a change to the code adds cells
to these folders, so a change that drew other workers or labels would mix two experiments."""

import glob
import json
import os
from dataclasses import replace

import numpy as np
import pytest

import noise_sim
from conftest import HAVE_MXNET, ROOT, shared_path
from MBEM import Experiment, load_images, oracle_targets
from mbemlib import aggregation as agg
from mbemlib import settings

FOLDERS = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(ROOT, "results", "*", "results.json"))
                 if os.path.basename(os.path.dirname(p)) not in ("demo", "smoke"))  # those two are not committed


def saved(folder):
    with open(os.path.join(folder, "results.json")) as f:
        cells = json.load(f)["cells"]
    return settings.saved_config(folder), cells


def workers_of(config, seed):
    """The confusions MBEM.py draws for a seed (MBEM.main)."""
    return noise_sim.simulate_workers(config.workers, 10, config.gamma, np.random.default_rng(seed),
                                      config.worker_model, config.group_size)


def test_every_committed_folder_is_checked():
    assert {os.path.basename(f) for f in FOLDERS} >= {"cpu", "cpu-mxnet", "cpu-oracle", "cifar10n"}


@pytest.mark.parametrize("folder", FOLDERS, ids=os.path.basename)
def test_simulated_workers_are_drawn_again_exactly(folder):
    config, cells = saved(folder)
    if config.annotations:
        pytest.skip("real workers")
    recorded_cells = [cell for cell in cells if "worker_accuracy_true" in cell]
    if not recorded_cells:
        pytest.skip("its cells predate the record of each worker's accuracy (the label test checks its labels)")
    for cell in recorded_cells:
        true_accuracy = agg.worker_accuracy(workers_of(config, cell["seed"]))
        recorded = cell["worker_accuracy_true"]  # rounded to 5 decimals
        assert true_accuracy == pytest.approx(recorded, abs=5e-6), (cell["seed"], cell["redundancy"])


@pytest.fixture(scope="module")
def cifar():
    """The shared CIFAR-10 JPEGs every committed folder trained on (decoded once, then cached)."""
    shared_path("cifar10-jpeg.tar.gz")
    config, _ = saved(os.path.join(ROOT, "results", "cpu"))
    old = os.getcwd()
    os.chdir(ROOT)  # a folder's config names its source relative to the checkout
    try:
        yield load_images(config)
    finally:
        os.chdir(old)


@pytest.mark.slow
@pytest.mark.parametrize("folder", FOLDERS, ids=os.path.basename)
def test_labels_and_label_only_targets_are_drawn_again_exactly(folder, cifar):
    config, cells = saved(folder)
    if config.annotations and not os.path.exists(os.path.join(ROOT, config.annotations)):
        pytest.skip(f"{config.annotations} is made by reproduce.py's prepare step (cifar10n.py)")
    if config.backend == "mxnet" and not HAVE_MXNET:  # the labels need no trainer: any installed one will do
        config = replace(config, backend="torch")
    old = os.getcwd()
    os.chdir(ROOT)
    try:
        experiment = Experiment(config, cifar, writer=False)
    finally:
        os.chdir(old)
    checked = 0
    for cell in cells:
        seed, r, n, algorithm = cell["seed"], cell["redundancy"], cell["n"], cell["algorithm"]
        workers = None if config.annotations else workers_of(config, seed)
        items, ann, _ = experiment.labels(seed, r, n, workers)
        assert len(items) == n and len(ann.items) == n * r
        rng = np.random.default_rng([seed, r, n, agg.REGISTRY[algorithm].seed])  # as Experiment.cell seeds it
        if algorithm in agg.LABEL_ONLY:
            targets = agg.aggregate(ann, algorithm, rng).posterior
        elif algorithm == "oracle":
            targets, _ = oracle_targets(ann, workers)
        else:
            continue  # mbem's and the field's targets are a trained model's, clean's the truth
        truth = cifar.train_labels[items]
        assert float((targets.argmax(axis=1) == truth).mean()) == pytest.approx(cell["label_accuracy"], abs=5e-6), \
            (seed, r, algorithm)
        checked += 1
    assert checked or {c["algorithm"] for c in cells} <= {"mbem", "clean", *agg.FIELD}
