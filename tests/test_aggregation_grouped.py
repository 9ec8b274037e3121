"""The grouped form (classes in fixed groups of g, one g x g confusion per worker) against the
dense code on the same labels: K = 12 classes in 4 groups of 3, where both fit."""

import numpy as np
import pytest

import noise_sim
from mbemlib import aggregation as agg
from mbemlib.cli import InputError

K, G, M = 12, 3, 15


@pytest.fixture(scope="module")
def labels():
    rng = np.random.default_rng(0)
    confusions = noise_sim.simulate_workers(M, K, 0.3, rng, "class-wise", group_size=G)  # (M, G, G)
    truth = rng.integers(0, K, 400)
    ann = agg.Annotations(*noise_sim.simulate_labels(truth, confusions, 4, rng), 400, M, K)
    return ann, agg.group_labels(ann, G), confusions, truth


def block_diagonal(confusions):
    """The dense m x K x K confusions of the grouped model: pi_a in every diagonal block, 0 elsewhere."""
    return np.stack([np.kron(np.eye(K // G), c) for c in confusions])


def tied(ann, item_dist):
    """Dense confusion counts of the labels, each worker's K/G diagonal blocks summed: the
    M-step of the grouped model written with the dense code."""
    counts = agg.confusion_counts(ann, item_dist)
    blocks = [counts[:, b * G:(b + 1) * G, b * G:(b + 1) * G] for b in range(K // G)]
    return agg.normalise_confusions(sum(blocks))


def test_groups_and_local_labels(labels):
    ann, grouped, _, truth = labels
    assert np.array_equal(grouped.group, truth // G)  # labels stay in the truth's group
    assert np.array_equal(grouped.classes(grouped.local.labels[np.argsort(grouped.local.items, kind="stable")][::4]),
                          ann.labels[np.argsort(ann.items, kind="stable")][::4])
    assert grouped.local.K == G and grouped.g == G


def test_weighted_majority_vote_is_the_dense_one(labels):
    ann, grouped, _, _ = labels
    assert np.array_equal(grouped.dense(agg.weighted_majority_vote(grouped.local)), agg.weighted_majority_vote(ann))


def test_majority_vote_agrees_and_breaks_ties_inside_the_group(labels):
    ann, grouped, _, _ = labels
    votes = grouped.classes(agg.majority_vote(grouped.local, np.random.default_rng(1)))
    counts = agg.label_counts(ann)
    assert (counts[np.arange(ann.n), votes] == counts.max(axis=1)).all()  # always a most frequent label
    untied = (counts == counts.max(axis=1, keepdims=True)).sum(axis=1) == 1
    assert np.array_equal(votes[untied], agg.majority_vote(ann, np.random.default_rng(2))[untied])


def test_posterior_and_oracle_are_the_dense_block_diagonal_model(labels):
    ann, grouped, confusions, _ = labels
    prior = np.random.default_rng(3).dirichlet(np.ones(G))
    with np.errstate(divide="ignore"):  # hammers' zeros, and log 0 = -inf outside the blocks: zero probability
        got = grouped.dense(agg.posterior(grouped.local, confusions, prior))
        want = agg.posterior(ann, block_diagonal(confusions), np.tile(prior, K // G))
    assert np.allclose(got, want, rtol=0, atol=1e-12)


def test_mbem_step_is_the_tied_dense_m_step(labels):
    ann, grouped, _, truth = labels
    rng = np.random.default_rng(4)
    predicted_local = np.where(rng.random(ann.n) < 0.7, truth % G, rng.integers(0, G, ann.n))  # within the group
    posterior, confusions, _ = agg.mbem_step(grouped.local, agg.one_hot(predicted_local, G))
    hard = agg.one_hot(grouped.classes(predicted_local), K)
    assert np.allclose(confusions, tied(ann, hard), rtol=0, atol=1e-15)
    with np.errstate(divide="ignore"):
        assert np.allclose(grouped.dense(posterior), agg.posterior(ann, block_diagonal(confusions)), atol=1e-12)


def test_dawid_skene_fixed_point_is_the_dense_block_diagonal_model(labels):
    ann, grouped, _, truth = labels
    result = agg.dawid_skene(grouped.local, tol=1e-12)
    dense_posterior = grouped.dense(result.posterior)
    # M-step: the tied dense counts of the final posterior give the final confusions (one more step)
    assert np.allclose(agg.estimate_confusions(grouped.local, result.posterior), tied(ann, dense_posterior),
                       atol=1e-12)
    # E-step: the dense code with those confusions gives the same posterior
    with np.errstate(divide="ignore"):
        again = agg.posterior(ann, block_diagonal(result.confusions), np.tile(result.prior, K // G))
    assert np.allclose(dense_posterior, again, atol=1e-9)
    wmv = agg.weighted_majority_vote(ann).argmax(axis=1)
    assert (dense_posterior.argmax(axis=1) == truth).mean() > (wmv == truth).mean()


def test_labels_in_two_groups_are_an_error():
    ann = agg.Annotations.from_arrays([0, 0, 1, 1], [0, 1, 0, 1], [1, 2, 4, 8], K=12)  # item 1: groups 1 and 2
    with pytest.raises(InputError, match=r"1 items have labels in two groups of 3 classes, e.g. item 1 .*\[4, 8\]"):
        agg.group_labels(ann, 3)
    with pytest.raises(ValueError, match="do not fall in groups of 5"):
        agg.group_labels(ann, 5)
