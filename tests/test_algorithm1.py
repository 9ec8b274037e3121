"""MBEM.mbem, the paper's Algorithm 1, with a fake trainer: what each round trains on and what it
feeds forward; and the release's smoothing constant, pinned from both sides."""

import numpy as np
import pytest

import MBEM
import noise_sim
from mbemlib import aggregation as agg


@pytest.fixture
def crowd():
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), [300, 60, 40])  # imbalanced: the class prior matters
    workers = noise_sim.hammer_spammer(12, 3, 0.5, rng)
    return agg.Annotations(*noise_sim.simulate_labels(truth, workers, 2, rng), len(truth), 12, 3), truth


def fake_trainer(predictions):
    """train(posterior, round) that records what it was given and returns round t's predictions."""
    seen = []

    def train(posterior, t):
        seen.append((t, posterior.copy()))
        return MBEM.Trained(predictions[t], None, [], None)

    return train, seen


@pytest.mark.parametrize("class_prior", [False, True])
def test_each_round_trains_on_the_step_from_the_previous_models_predictions(crowd, class_prior):
    ann, truth = crowd
    rng = np.random.default_rng(1)
    bootstrap = rng.integers(0, 3, ann.n)  # the bootstrap model's predicted classes
    rounds = [agg.one_hot(np.where(rng.random(ann.n) < p, truth, bootstrap), 3) for p in (0.6, 0.9, 1.0)]
    train, seen = fake_trainer(rounds)
    posterior, confusions, last, posteriors = MBEM.mbem(ann, bootstrap, train, rounds=3, class_prior=class_prior)
    fed = [agg.one_hot(bootstrap, 3), *rounds[:2]]  # round t's M-step uses the model trained in round t - 1
    for t, (given, start) in enumerate(zip(seen, fed, strict=True)):
        want, want_confusions, _ = agg.mbem_step(ann, start, class_prior=class_prior)
        assert given[0] == t and np.allclose(given[1], want) and np.allclose(posteriors[t], want)
    assert np.allclose(posterior, posteriors[-1]) and np.allclose(confusions, want_confusions)
    assert last.train_probs is rounds[2] and len(posteriors) == 3


def test_the_class_prior_changes_the_posterior(crowd):
    ann, truth = crowd
    train, _ = fake_trainer([agg.one_hot(truth, 3)])
    without = MBEM.mbem(ann, truth, train, rounds=1, class_prior=False)[0]
    with_prior = MBEM.mbem(ann, truth, train, rounds=1, class_prior=True)[0]
    assert np.abs(without - with_prior).max() > 0.1  # spammers' items lean towards the large class
    assert (with_prior.argmax(axis=1) == 0).sum() > (without.argmax(axis=1) == 0).sum()


def test_release_zero_is_pinned_from_both_sides():
    """A perfect worker's zero confusion counts become 1e-10 (agg.RELEASE_ZERO) before its rows are
    renormalised: with five items of each class its off-diagonal entries are 1e-10 / 5, and so is
    the posterior an item it labelled keeps on the other class. A constant of 1e-9 or 1e-20 would
    give ten times more or ten billion times less."""
    ann = agg.Annotations(np.arange(10), np.zeros(10, int), np.repeat([0, 1], 5), 10, 1, 2)
    confusions = agg.estimate_confusions(ann, agg.one_hot(ann.labels, 2))
    assert confusions[0, 0, 1] == pytest.approx(2e-11, rel=1e-6) and confusions[0, 1, 0] == pytest.approx(2e-11)
    posterior = agg.posterior(ann, confusions)
    assert posterior[0, 1] == pytest.approx(2e-11, rel=1e-6) and posterior[9, 0] == pytest.approx(2e-11, rel=1e-6)
