import numpy as np
import pytest

import noise_sim
from mbemlib import aggregation


def test_hammer_spammer_matches_release_construction():
    rng = np.random.default_rng(0)
    K = 10
    confusions = noise_sim.hammer_spammer(2000, K, 0.2, rng)
    hammer = np.all(confusions == np.eye(K), axis=(1, 2))
    assert abs(hammer.mean() - 0.2) < 0.03
    spammer = confusions[~hammer][0]
    # 1/K + 0.01 on the diagonal, 1/K off it, rows renormalised by 1 + 0.01
    assert np.allclose(np.diag(spammer), (0.1 + 0.01) / 1.01)
    assert np.allclose(spammer[0, 1], 0.1 / 1.01)
    assert np.allclose(confusions.sum(axis=2), 1.0)


def test_class_wise_rows_are_hammer_or_spammer():
    rng = np.random.default_rng(1)
    K = 5
    confusions = noise_sim.class_wise_hammer_spammer(400, K, 0.3, rng)
    assert np.allclose(confusions.sum(axis=2), 1.0)
    diagonal = np.diagonal(confusions, axis1=1, axis2=2)
    hammer_rows = diagonal == 1.0
    assert abs(hammer_rows.mean() - 0.3) < 0.03
    # spammer row: ones, 1 + U(0.1, 0.11) on the diagonal, renormalised
    d = diagonal[~hammer_rows]
    assert np.all((d > 1.1 / (K + 0.1)) & (d < 1.11 / (K + 0.11)))


def test_distinct_workers_are_distinct_and_uniform():
    rng = np.random.default_rng(2)
    chosen = noise_sim.distinct_workers(20000, 4, 7, rng)
    assert chosen.shape == (20000, 4)
    assert np.all(np.sort(chosen, axis=1)[:, 1:] != np.sort(chosen, axis=1)[:, :-1])
    frequency = np.bincount(chosen.ravel(), minlength=7) / chosen.size
    assert np.allclose(frequency, 1 / 7, atol=0.01)
    with pytest.raises(ValueError):
        noise_sim.distinct_workers(3, 8, 7, rng)


def test_empirical_confusions_converge_to_truth():
    rng = np.random.default_rng(3)
    K, m = 4, 5
    true_conf = noise_sim.class_wise_hammer_spammer(m, K, 0.5, rng)
    errors = []
    for n in (500, 50000):
        truth = rng.integers(0, K, size=n)
        items, workers, labels = noise_sim.simulate_labels(truth, true_conf, 3, rng)
        ann = aggregation.Annotations(items, workers, labels, n, m, K)
        estimate = aggregation.estimate_confusions(ann, aggregation.one_hot(truth, K), smoothing=0.0)
        errors.append(np.abs(estimate - true_conf).max())
    assert errors[1] < 0.02 and errors[1] < errors[0]


def test_grouped_workers_confuse_only_inside_groups():
    rng = np.random.default_rng(4)
    confusions = noise_sim.simulate_workers(50, 100, 0.2, rng, group_size=10)
    assert confusions.shape == (50, 10, 10)
    truth = rng.integers(0, 100, size=5000)
    items, workers, labels = noise_sim.simulate_labels(truth, confusions, 2, rng)
    assert len(items) == 10000
    assert np.all(labels // 10 == truth[items] // 10)
    assert np.mean(labels == truth[items]) < 0.5  # spammers do confuse inside the group
    with pytest.raises(ValueError):
        noise_sim.simulate_workers(5, 15, 0.2, rng, group_size=10)


def test_plans():
    assert noise_sim.fixed_budget_plan(50000, [1, 5, 13]) == [(1, 50000), (5, 10000), (13, 3846)]


def test_same_seed_same_labels():
    def run(seed):
        rng = np.random.default_rng(seed)
        conf = noise_sim.hammer_spammer(10, 3, 0.2, rng)
        return noise_sim.simulate_labels(rng.integers(0, 3, 100), conf, 2, rng)

    assert all(np.array_equal(a, b) for a, b in zip(run(5), run(5), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(run(5), run(6), strict=True))
