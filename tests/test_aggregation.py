import csv
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import MBEM
import noise_sim
from conftest import shared_path
from mbemlib import aggregation as agg
from mbemlib import label_files


def random_annotations(rng, n=30, m=6, K=3, r=3):
    conf = noise_sim.class_wise_hammer_spammer(m, K, 0.4, rng)
    truth = rng.integers(0, K, size=n)
    items, workers, labels = noise_sim.simulate_labels(truth, conf, r, rng)
    return truth, conf, agg.Annotations(items, workers, labels, n, m, K)


def brute_force_posterior(ann, confusions, prior):
    """The product formula, one item and one label at a time."""
    out = np.zeros((ann.n, ann.K))
    for i in range(ann.n):
        for k in range(ann.K):
            p = prior[k]
            for a, l in zip(ann.workers[ann.items == i], ann.labels[ann.items == i], strict=True):
                p *= confusions[a, k, l]
            out[i, k] = p
    return out / out.sum(axis=1, keepdims=True)


def test_posterior_equals_product_formula():
    rng = np.random.default_rng(0)
    _, _, ann = random_annotations(rng)
    confusions = rng.dirichlet(np.ones(ann.K), size=(ann.m, ann.K))
    prior = rng.dirichlet(np.ones(ann.K))
    assert np.allclose(agg.posterior(ann, confusions, prior), brute_force_posterior(ann, confusions, prior))
    assert np.allclose(agg.posterior(ann, confusions), brute_force_posterior(ann, confusions, np.ones(ann.K)))


def test_mbem_step_equals_paper_formulas():
    rng = np.random.default_rng(1)
    truth, _, ann = random_annotations(rng, n=40)
    probs = rng.dirichlet(np.ones(ann.K), size=ann.n)
    t = probs.argmax(axis=1)
    # M-step: pi_a[k, l] = #(t = k, a said l) / #(t = k, a labelled)
    counts = np.zeros((ann.m, ann.K, ann.K))
    for i, a, l in zip(ann.items, ann.workers, ann.labels, strict=True):
        counts[a, t[i], l] += 1
    rows = counts.sum(axis=2, keepdims=True)
    expected = np.where(rows > 0, np.where(counts > 0, counts, 1e-10), 1 / ann.K)
    expected /= expected.sum(axis=2, keepdims=True)
    q = np.bincount(t, minlength=ann.K) / ann.n
    post, confusions, prior = agg.mbem_step(ann, probs, class_prior=True)
    assert np.allclose(confusions, expected)
    assert np.allclose(prior, q)
    assert np.allclose(post, brute_force_posterior(ann, expected, q))
    post_release, _, no_prior = agg.mbem_step(ann, probs)
    assert no_prior is None
    assert np.allclose(post_release, brute_force_posterior(ann, expected, np.ones(ann.K)))
    # soft: counts weighted by the model's probabilities
    _, soft, _ = agg.mbem_step(ann, probs, hard=False, smoothing=0.0)
    soft_counts = np.zeros((ann.m, ann.K, ann.K))
    for i, a, l in zip(ann.items, ann.workers, ann.labels, strict=True):
        soft_counts[a, :, l] += probs[i]
    assert np.allclose(soft, soft_counts / soft_counts.sum(axis=2, keepdims=True))


def test_class_prior_makes_a_perfect_workers_posterior_follow_the_models_errors():
    """Why `--class-prior` collapsed on results/cpu-rounds: with t = the model's prediction,
    q[k] pi_a[k, l] is proportional to #(model says k, a says l), so the posterior is the
    model's own confusion. A perfect worker's 0s, which the model calls 1 more often than 0,
    become 1s; without q (the release) pi_a[k, 0] is largest at k = 0 and the 0s stay 0s."""
    truth = np.repeat([0, 1], 50)
    predicted = np.r_[np.zeros(20, int), np.ones(30, int), np.ones(50, int)]  # recall of class 0: 40%
    ann = agg.Annotations.from_arrays(np.arange(100), np.zeros(100, int), truth, K=2)
    with_prior, _, prior = agg.mbem_step(ann, agg.one_hot(predicted, 2), class_prior=True)
    release, _, _ = agg.mbem_step(ann, agg.one_hot(predicted, 2))
    assert np.allclose(prior, [0.2, 0.8])
    assert (with_prior.argmax(axis=1) == 1).all()  # every 0 the worker gave is overruled
    assert (release.argmax(axis=1) == truth).all()


def test_additive_smoothing():
    ann = agg.Annotations.from_arrays([0, 1], [0, 0], [0, 1], K=2)
    conf = agg.estimate_confusions(ann, np.array([[1.0, 0], [1.0, 0]]), smoothing=1.0)
    assert np.allclose(conf[0], [[2 / 4, 2 / 4], [0.5, 0.5]])


def test_dawid_skene_fixed_point_and_monotone():
    rng = np.random.default_rng(2)
    _, _, ann = random_annotations(rng, n=200, m=8, K=3, r=4)
    result = agg.dawid_skene(ann, max_iter=500, tol=1e-12)
    assert np.all(np.diff(result.log_likelihood) > -1e-6)
    # one more EM round from the returned posterior changes nothing
    again = agg.dawid_skene(ann, max_iter=1, init=result.posterior)
    assert np.allclose(again.posterior, result.posterior, atol=1e-4)
    assert result.iterations < 500


def test_dawid_skene_beats_majority_vote_on_simulated_spammers():
    rng = np.random.default_rng(3)
    truth, _, ann = random_annotations(rng, n=2000, m=20, K=4, r=5)
    mv = agg.majority_vote(ann, rng)
    ds = agg.dawid_skene(ann).posterior.argmax(axis=1)
    assert (ds == truth).mean() > (mv == truth).mean() + 0.02


def test_majority_vote_ties_are_uniform():
    # item 0: labels 0, 1, 2 once each: a three-way tie
    ann = agg.Annotations.from_arrays([0, 0, 0], [0, 1, 2], [0, 1, 2])
    rng = np.random.default_rng(4)
    picks = np.array([agg.majority_vote(ann, rng)[0] for _ in range(3000)])
    assert np.allclose(np.bincount(picks, minlength=3) / 3000, 1 / 3, atol=0.03)
    # a clear majority is never overturned
    ann = agg.Annotations.from_arrays([0, 0, 0], [0, 1, 2], [1, 1, 2])
    assert all(agg.majority_vote(ann, rng)[0] == 1 for _ in range(200))


def test_weighted_majority_vote_is_label_frequency():
    ann = agg.Annotations.from_arrays([0, 0, 0, 1], [0, 1, 2, 0], [1, 1, 2, 0], K=3)
    assert np.allclose(agg.weighted_majority_vote(ann), [[0, 2 / 3, 1 / 3], [1, 0, 0]])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 400))
def test_posterior_finite_and_normalised_even_with_many_labels(seed, labels_per_item):
    rng = np.random.default_rng(seed)
    K, n = 4, 3
    m = labels_per_item
    items = np.repeat(np.arange(n), labels_per_item)
    workers = np.tile(np.arange(m), n)
    ann = agg.Annotations(items, workers, rng.integers(0, K, len(items)), n, m, K)
    confusions = rng.dirichlet(np.full(K, 0.1), size=(m, K)) + 1e-300
    post = agg.posterior(ann, confusions / confusions.sum(axis=2, keepdims=True), rng.dirichlet(np.ones(K)))
    assert np.all(np.isfinite(post)) and np.allclose(post.sum(axis=1), 1.0)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_results_invariant_to_permuting_items_workers_and_classes(seed):
    rng = np.random.default_rng(seed)
    _, _, ann = random_annotations(rng, n=25, m=5, K=3, r=2)
    base = agg.dawid_skene(ann, max_iter=30)
    pi_items, pi_workers, pi_classes = rng.permutation(ann.n), rng.permutation(ann.m), rng.permutation(ann.K)
    permuted = agg.Annotations(pi_items[ann.items], pi_workers[ann.workers], pi_classes[ann.labels],
                               ann.n, ann.m, ann.K)
    order = rng.permutation(len(ann.items))  # the order of the label rows must not matter either
    permuted = agg.Annotations(permuted.items[order], permuted.workers[order], permuted.labels[order],
                               ann.n, ann.m, ann.K)
    result = agg.dawid_skene(permuted, max_iter=30)
    expected = np.empty_like(base.posterior)
    expected[np.ix_(pi_items, pi_classes)] = base.posterior
    assert np.allclose(result.posterior, expected, atol=1e-8)
    expected_conf = np.empty_like(base.confusions)
    expected_conf[np.ix_(pi_workers, pi_classes, pi_classes)] = base.confusions
    assert np.allclose(result.confusions, expected_conf, atol=1e-8)


def test_worker_accuracy():
    conf = np.stack([np.eye(3), np.full((3, 3), 1 / 3)])
    assert np.allclose(agg.worker_accuracy(conf), [1.0, 1 / 3])


def real_accuracy(name):
    ann, item_names, _, classes = label_files.read_answers(shared_path("crowd", name, "answers.csv"))
    with open(shared_path("crowd", name, "truth.csv")) as f:
        truth = {row["item"]: row["label"] for row in csv.DictReader(f)}
    predicted = agg.dawid_skene(ann).posterior.argmax(axis=1)
    index = {item: i for i, item in enumerate(item_names)}
    return np.mean([classes[predicted[index[item]]] == label for item, label in truth.items()])


def test_dawid_skene_on_real_dog_labels():
    assert real_accuracy("dog") >= 0.8426  # crowd-kit 1.4.2 DawidSkene on the same file


def test_dawid_skene_on_real_face_labels():
    assert real_accuracy("face") >= 0.6404


def test_incidence_counts_every_label():
    rng = np.random.default_rng(5)
    _, _, ann = random_annotations(rng)
    dense = np.zeros((ann.n, ann.m * ann.K))
    for i, a, l in zip(ann.items, ann.workers, ann.labels, strict=True):
        dense[i, a * ann.K + l] += 1
    assert np.array_equal(ann.incidence.toarray(), dense)
    assert list(itertools.islice(agg.label_counts(ann).sum(axis=1), 3)) == [3.0, 3.0, 3.0]


def test_labels_right_counts_labels_not_classes():
    """Worker 0 labels three items of class 0 (two right) and one of class 1 (right); worker 1
    never labels class 1. labels_right weighs each class by the worker's labels on it:
    0.75 = (3/4)(2/3) + (1/4)(1), while the uniform mean of the diagonal gives (2/3 + 1) / 2 and,
    for worker 1, counts the empty class-1 row as 1/K."""
    ann = agg.Annotations.from_arrays([0, 1, 2, 3, 0], [0, 0, 0, 0, 1], [0, 0, 1, 1, 0], K=2)
    truth = agg.one_hot(np.array([0, 0, 0, 1]), 2)
    confusions = agg.estimate_confusions(ann, truth)
    right = agg.labels_right(ann, confusions, truth)
    assert np.allclose(right, [0.75, 1.0])
    assert np.allclose(agg.worker_accuracy(confusions), [(2 / 3 + 1) / 2, (1 + 0.5) / 2])
    # at r = 1 majority vote's targets are the labels themselves: every worker is right on all
    ann = agg.Annotations.from_arrays(np.arange(6), [0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 0, 1], K=2)
    mv = agg.one_hot(ann.labels, 2)
    assert np.allclose(agg.labels_right(ann, agg.estimate_confusions(ann, mv), mv), 1.0)


def weak_model_and_crowd(seed=0, n=20000, K=10, m=100, accuracy=0.5, worker_model="hammer-spammer"):
    """Workers of `worker_model` (gamma 0.2) labelling each item once, and a model right on a share
    `accuracy` of the items whose errors lean to the next class (a structured confusion, as a
    real network's are), independent of the labels given the truth."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, K, n)
    workers = noise_sim.simulate_workers(m, K, 0.2, rng, worker_model)
    ann = agg.Annotations(*noise_sim.simulate_labels(truth, workers, 1, rng), n, m, K)
    wrong = np.where(rng.random(n) < 0.6, (truth + 1) % K, rng.integers(0, K, n))
    predicted = np.where(rng.random(n) < accuracy, truth, wrong)
    return ann, truth, workers, agg.one_hot(predicted, K)


def test_one_coin_step_corrects_for_the_models_accuracy():
    """From single labels and a model right half the time, MBEM's step rates a hammer at the
    model's accuracy; the one-coin step, given the model's accuracy or estimating it from the best
    workers, rates hammers near 1 and spammers near 0, and its targets are nearly the oracle's."""
    ann, truth, workers, model = weak_model_and_crowd()
    hammers = agg.worker_accuracy(workers) == 1
    p_true = lambda targets: targets[np.arange(ann.n), truth].mean()  # noqa: E731
    oracle = agg.posterior(ann, agg.normalise_confusions(workers))
    release, release_confusions, _ = agg.mbem_step(ann, model)
    assert agg.worker_accuracy(release_confusions)[hammers].mean() < 0.65
    for known in (float((model.argmax(axis=1) == truth).mean()), None):
        targets, confusions, rho = agg.one_coin_step(ann, model, model_accuracy=known)
        accuracy = agg.worker_accuracy(confusions)
        assert abs(rho - 0.5) < 0.05 and accuracy[hammers].mean() > 0.9 and accuracy[~hammers].mean() < 0.15
        assert p_true(oracle) - p_true(targets) < 0.01 and p_true(oracle) - p_true(release) > 0.03
    # rows stay distributions, smoothed as the release smooths (no zero entry: finite logs)
    assert np.allclose(confusions.sum(axis=2), 1) and confusions.min() > 0


def test_per_class_coin_step_corrects_for_the_models_precision_on_class_wise_workers():
    """Class-wise workers (a hammer on some classes, a spammer on the rest) from single labels and
    a model right half the time: no worker is perfect on every class, so the one-coin step's
    estimate of the model's accuracy collapses; the per-class step, estimating the model's precision
    class by class from the best workers there, rates hammer rows near 1 and spammer rows near 0,
    and its targets are nearly the oracle's where the release's step is 0.03 below them."""
    ann, truth, workers, model = weak_model_and_crowd(worker_model="class-wise", n=30000)
    hammer_rows = np.diagonal(workers, axis1=1, axis2=2) == 1
    p_true = lambda targets: targets[np.arange(ann.n), truth].mean()  # noqa: E731
    oracle = agg.posterior(ann, agg.normalise_confusions(workers))
    release = agg.mbem_step(ann, model)[0]
    assert agg.one_coin_step(ann, model)[2] < 0.4  # the best workers are not perfect: one-coin's rho is too low
    predicted = model.argmax(axis=1)
    precision = np.array([(truth[predicted == k] == k).mean() for k in range(ann.K)])
    for known in (precision, None):
        targets, confusions, rho = agg.per_class_coin_step(ann, model, model_precision=known)
        alpha = np.diagonal(confusions, axis1=1, axis2=2)
        assert np.abs(rho - precision).max() < 0.1
        assert alpha[hammer_rows].mean() > 0.85 and alpha[~hammer_rows].mean() < 0.2
        assert p_true(oracle) - p_true(targets) < 0.01 < 0.03 < p_true(oracle) - p_true(release)
    assert np.allclose(confusions.sum(axis=2), 1) and confusions.min() > 0


def test_the_model_as_one_more_annotator_is_not_identifiable_from_single_labels():
    """Two views of each item (one worker, the model) fit equally well with the model perfect and
    each worker's confusion P(label | model's class): Dawid-Skene lands there, so its worker
    estimates are no better than MBEM's step (docs/worker-estimates.md). With three labels an item, it
    separates them."""
    ann, truth, workers, model = weak_model_and_crowd()
    _, confusions, model_confusion = agg.model_as_annotator(ann, model, use_model=False)
    assert np.diagonal(model_confusion).mean() > 0.9  # the model taken as right, as MBEM's step takes it
    hammers = agg.worker_accuracy(workers) == 1
    assert agg.worker_accuracy(confusions)[hammers].mean() < 0.7
    rng = np.random.default_rng(1)
    three = agg.Annotations(*noise_sim.simulate_labels(truth, workers, 3, rng), ann.n, ann.m, ann.K)
    _, confusions, model_confusion = agg.model_as_annotator(three, model, use_model=False)
    assert abs(np.diagonal(model_confusion).mean() - 0.5) < 0.05
    assert agg.worker_accuracy(confusions)[hammers].mean() > 0.85


def test_the_release_smoothing_constant_sets_how_much_a_perfect_worker_can_be_overruled():
    """A perfect worker's zero counts are lifted to exactly 1e-10 before its rows are normalised
    (the release's post_prob_DS): with 100 labels a row, an off-diagonal entry is 1e-10 / (100 +
    2e-10). When it says 0 and a second worker's label 1 is 1e-5 likely from class 0 and 0.5 from
    class 1, the posterior of class 1 follows from that entry: a constant of 1e-9 or 1e-20 would
    move it tenfold or more."""
    K = 3
    perfect = agg.normalise_confusions(np.eye(K)[None] * 100.0)[0]
    row = 100 + 2e-10
    assert perfect[0, 1] == pytest.approx(1e-10 / row, rel=1e-12) and perfect[0, 0] == pytest.approx(100 / row)
    other = np.array([[1 - 2e-5, 1e-5, 1e-5], [0.25, 0.5, 0.25], [1 / 3, 1 / 3, 1 / 3]])
    ann = agg.Annotations.from_arrays([0, 0], [0, 1], [0, 1], n=1, m=2, K=K)
    posterior = agg.posterior(ann, np.stack([perfect, other]))[0]
    lifted, kept = 1e-10 / row, 100 / row
    expected = lifted * 0.5 / (kept * 1e-5 + lifted * 0.5 + lifted / 3)
    assert posterior[1] == pytest.approx(expected, rel=1e-6)


def test_every_method_has_its_own_fixed_seed():
    """MBEM.py seeds each method's draws by its registry entry, by name: no two share one
    (tests/test_committed_results.py checks the values against the committed folders)."""
    seeds = [method.seed for method in agg.REGISTRY.values()]
    assert len(set(seeds)) == len(seeds)
    assert {name: agg.REGISTRY[name].seed for name in ("mv", "wmv", "em")} == {"mv": 0, "wmv": 1, "em": 2}


def test_the_registry_says_what_each_method_needs():
    assert agg.LABEL_ONLY == ("mv", "wmv", "em") and agg.FIELD == ("crowdlab", "crowdlayer", "conal")
    assert {m.needs for m in agg.REGISTRY.values()} == set(MBEM.TARGET_MAKERS)  # each kind has its maker


def test_which_redundancies_a_method_runs_at():
    assert agg.runs_at("mv", 1) and agg.runs_at("crowdlab", 2) and not agg.runs_at("crowdlab", 1)
    assert agg.runs_at("mv", 0) and agg.runs_at("crowdlab", 0)  # r = 0: real labels as they are
