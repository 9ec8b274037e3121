"""The budget planner: its Monte Carlo against an exact enumeration, its worth measure against the
closed forms the docstring states, the pilot's bootstrap, and the command line."""

import csv
import itertools

import numpy as np
import pytest

import noise_sim
from conftest import run_script
from mbemlib import aggregation as agg
from mbemlib import planning


def noisy(K, diagonal):
    """A worker right with probability `diagonal`, otherwise uniform over the other classes."""
    return diagonal * np.eye(K) + (1 - diagonal) / (K - 1) * (1 - np.eye(K))


def exact(pool, r, method):
    """(accuracy, worth per item) of a method's targets by enumerating every r-subset of workers,
    true class and labels: the population values `planning.worth` estimates by Monte Carlo."""
    m, K = len(pool.confusions), pool.K
    subsets = list(itertools.combinations(range(m), r))
    signal = power = right = 0.0
    for workers in subsets:
        for y in range(K):
            for labels in itertools.product(range(K), repeat=r):
                rows = [pool.confusions[a, :, l] for a, l in zip(workers, labels, strict=True)]  # P(l | each class)
                p = pool.prior[y] / len(subsets) * np.prod([row[y] for row in rows])
                counts = np.bincount(labels, minlength=K).astype(float)
                if method == "wmv":
                    t = counts / r
                elif method == "mv":  # ties broken uniformly: the expected one-hot target
                    t = (counts == counts.max()) / (counts == counts.max()).sum()
                else:  # oracle: the posterior under the pool's confusions
                    t = pool.prior * np.prod(rows, axis=0)
                    t /= t.sum()
                s = (K * t[y] - 1) / (K - 1)
                # a random one-hot has power 1 whatever the tie-break; its expected target would not
                signal += p * s
                power += p * (1.0 if method == "mv" else ((t - 1 / K) ** 2).sum() / (1 - 1 / K))
                right += p * (t[y] if method == "mv" else float(np.argmax(t) == y))
    return right, signal ** 2 / power


@pytest.mark.parametrize("r", [1, 3])
def test_monte_carlo_matches_exact_enumeration_for_two_kinds_of_worker(r):
    K = 3
    pool = planning.Pool(np.stack([noisy(K, 0.9)] * 2 + [noisy(K, 0.45)] * 3), np.array([0.5, 0.3, 0.2]))
    rng = np.random.default_rng(3)
    ann, truth = planning.collection(pool, 240000 // r, r, rng)
    for method in ("mv", "wmv", "oracle"):
        accuracy, efficiency = planning.worth(planning.targets(method, ann, pool, truth, rng), truth)
        want_accuracy, want_worth = exact(pool, r, method)
        assert accuracy == pytest.approx(want_accuracy, abs=0.006), method
        assert efficiency == pytest.approx(want_worth, rel=0.03, abs=0.002), method


def test_worth_closed_forms():
    K, n = 10, 200000
    rng = np.random.default_rng(0)
    truth = rng.integers(0, K, n)
    for a in (0.28, 0.6, 1.0):  # hard labels right with probability a, errors uniform
        hard = np.where(rng.random(n) < a, truth, (truth + rng.integers(1, K, n)) % K)
        accuracy, efficiency = planning.worth(agg.one_hot(hard, K), truth)
        assert accuracy == pytest.approx(a, abs=0.005)
        assert efficiency == pytest.approx(((K * a - 1) / (K - 1)) ** 2, abs=0.005)
    # a right one-hot target on a share f of the items and a uniform one elsewhere: worth f per item,
    # where the same share right among hard labels is worth ((K a - 1)/(K - 1))^2, far less
    f = 0.2
    soft = np.where((rng.random(n) < f)[:, None], agg.one_hot(truth, K), 1.0 / K)
    assert planning.worth(soft, truth)[1] == pytest.approx(f, abs=0.005)
    assert planning.worth(np.full((n, K), 1.0 / K), truth) == (pytest.approx(1 / n, abs=1), 0.0)


def test_learning_curve_fit():
    points = [(n, 5.0 * n ** -0.3) for n in (1000, 4000, 20000)]
    curve = planning.Classifier.fit(points, K=10)
    assert (curve.c, curve.beta) == (pytest.approx(5.0), pytest.approx(0.3))
    assert curve.error(1) == pytest.approx(0.9)  # capped at chance
    one = planning.Classifier.fit([(10000, 0.2)], K=10, beta=0.5)
    assert (one.beta, float(one.error(40000))) == (0.5, pytest.approx(0.1))


def test_model_predictions_are_right_on_a_share_rho_and_otherwise_uniform():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 4, 100000)
    predicted = planning.model_predictions(truth, 0.7, 4, rng)
    assert (predicted == truth).mean() == pytest.approx(0.7, abs=0.005)
    wrong = (predicted - truth)[predicted != truth] % 4
    assert np.bincount(wrong, minlength=4)[1:] / len(wrong) == pytest.approx([1 / 3] * 3, abs=0.01)


def test_resampled_pilot_keeps_each_items_labels_together():
    rng = np.random.default_rng(2)
    items, workers, labels = noise_sim.simulate_labels(rng.integers(0, 3, 50), np.stack([noisy(3, 0.8)] * 6), 2, rng)
    ann = agg.Annotations(items, workers, labels, 50, 6, 3)
    copy = planning.resample_items(ann, np.random.default_rng(5))
    chosen = np.random.default_rng(5).integers(0, 50, size=50)  # the draw resample_items makes
    for new, old in enumerate(chosen):
        mine = sorted(zip(copy.workers[copy.items == new], copy.labels[copy.items == new], strict=True))
        assert mine == sorted(zip(ann.workers[ann.items == old], ann.labels[ann.items == old], strict=True))


def test_pilot_pool_recovers_good_and_bad_workers():
    K, rng = 4, np.random.default_rng(3)
    confusions = np.stack([noisy(K, 0.95)] * 5 + [noisy(K, 0.3)] * 5)
    truth = rng.integers(0, K, 2000)
    ann = agg.Annotations(*noise_sim.simulate_labels(truth, confusions, 3, rng), 2000, 10, K)
    fitted = agg.worker_accuracy(planning.pilot_pool(ann).confusions)
    assert fitted[:5] == pytest.approx([0.95] * 5, abs=0.03)
    assert fitted[5:] == pytest.approx([0.3] * 5, abs=0.04)


def test_recommends_as_the_closed_forms_rank():
    """All hammers: every label is right, so one label per item is worth budget clean items and r
    labels budget / r; every method recommends r = 1."""
    rows = planning.plan(planning.simulated_pools(2, 20, 5, 1.0, "hammer-spammer"), 6000, [1, 2, 3])
    table, best = planning.summary(rows, planning.DEFAULT_METHODS)
    assert {method: r for method, (r, _) in best.items()} == dict.fromkeys(planning.DEFAULT_METHODS, 1)
    assert table["wmv"][3][2][0] == pytest.approx(2000)
    assert table["mv"][1][1] == (1.0, 0.0)


def test_cli_on_a_pilot_csv(tmp_path):
    rng = np.random.default_rng(4)
    truth = rng.integers(0, 3, 300)
    crowd = np.stack([noisy(3, 0.9)] * 4 + [noisy(3, 0.4)] * 4)
    items, workers, labels = noise_sim.simulate_labels(truth, crowd, 2, rng)
    pilot = tmp_path / "pilot.csv"
    with open(pilot, "w", newline="") as f:
        rows = zip(items, (f"w{a}" for a in workers), labels, strict=True)
        csv.writer(f).writerows([("item", "worker", "label"), *rows])
    out, figure = tmp_path / "plan.csv", tmp_path / "plan.png"
    done = run_script("plan.py", pilot, "--budget", 3000, "--redundancy", "1,3", "--repeats", 2, "--out", out,
                      "--plot", figure)
    assert done.returncode == 0, done.stderr
    last = [line for line in done.stdout.splitlines() if line.startswith("recommended r: ")]
    assert len(last) == 1 and all(f"{m} " in last[0] for m in planning.DEFAULT_METHODS)
    with open(out) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8 and {row["items"] for row in table} == {"3000", "1000"}
    assert figure.stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["--learning-curve", "50000"], "items:error pairs"),
    (["--learning-curve", "50000:1.5"], "errors in (0, 1)"),
    (["--algorithms", "mv,crowdlab"], "'crowdlab' is not one of"),
    (["--redundancy", "1,200"], "redundancy 200 needs that many distinct workers"),
    (["no-such-file.csv"], "no-such-file.csv"),
])
def test_bad_input_is_one_line(args, message):
    done = run_script("plan.py", *args, "--repeats", 2)
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_api_plan_from_a_dataframe_and_simulated():
    import pandas as pd

    from mbemlib import api

    rng = np.random.default_rng(6)
    truth = rng.integers(0, 3, 200)
    crowd = np.stack([noisy(3, 0.9)] * 3 + [noisy(3, 0.5)] * 3)
    items, workers, labels = noise_sim.simulate_labels(truth, crowd, 2, rng)
    names = np.array(["a", "b", "c"])
    answers = pd.DataFrame({"item": [f"i{i}" for i in items], "worker": workers, "label": names[labels]})
    table, best = api.plan(answers, budget=1200, redundancy=[1, 2], repeats=2)
    assert set(best) == set(planning.DEFAULT_METHODS) and set(table["redundancy"]) == {1, 2}
    table, best = api.plan(budget=6000, redundancy=[1, 3], repeats=2, simulated=dict(workers=20, gamma=1.0, classes=5))
    assert best == dict.fromkeys(planning.DEFAULT_METHODS, 1)


def test_noisy_run_solves_lambda_and_mu_back():
    K, n, accuracy = 10, 20000, 0.5
    truth = planning.Classifier(*planning.Classifier.fit(planning.DEFAULT_CURVE, K).__dict__.values())
    truth.copying = 0.4
    s = (K * accuracy - 1) / (K - 1)
    error = float(truth.predicted_error(n, s * s, accuracy))  # what a classifier with lambda 0.4 reaches
    repeat = (1 - error) * accuracy + error * (1 - accuracy) / (K - 1)
    agreement = 0.3 + 0.7 * repeat  # mu: 0.3 of the items repeated
    clean = planning.Classifier.fit(planning.DEFAULT_CURVE, K)
    fitted = clean.with_noisy_run(n, accuracy, error, K, agreement)
    assert (fitted.copying, fitted.repeating) == (pytest.approx(0.4), pytest.approx(0.3))
    better = float(clean.error(n * s * s)) * 0.9  # better than the averaging learner: lambda stays 0
    assert clean.with_noisy_run(n, accuracy, better, K).copying == 0.0


def test_the_two_learners_closed_forms_for_hard_noisy_labels():
    """Hard labels right with probability a: the averaging learner reaches err(n s^2), the copying
    one 1/K + s (1 - err(n) - 1/K) accuracy, s = (K a - 1) / (K - 1)."""
    K, n, a = 10, 5000, 0.6
    s = (K * a - 1) / (K - 1)
    averaging = planning.Classifier.fit(planning.DEFAULT_CURVE, K)
    copying = planning.Classifier(averaging.c, averaging.beta, averaging.chance, copying=1.0)
    assert averaging.predicted_error(n, s * s, a) == pytest.approx(averaging.error(n * s * s))
    assert 1 - copying.predicted_error(n, s * s, a) == pytest.approx(1 / K + s * (1 - averaging.error(n) - 1 / K))
    assert copying.predicted_error(n, 1.0, 1.0) == pytest.approx(averaging.error(n))  # clean labels: the same


def test_a_model_that_memorised_every_label_gives_mbem_the_labels_back():
    """At r = 1 a bootstrap model that repeats every label agrees with every worker, so MBEM's step
    trusts each label fully and its targets are the labels themselves, whatever rho is."""
    pool = planning.simulated_pool(20, 5, 0.3, "hammer-spammer", np.random.default_rng(8))
    ann, truth = planning.collection(pool, 3000, 1, np.random.default_rng(9))
    targets = planning.targets("mbem", ann, pool, truth, np.random.default_rng(10), rho=0.9, repeating=1.0)
    assert np.array_equal(targets.argmax(axis=1), ann.labels[np.argsort(ann.items)])
    assert targets.max(axis=1).min() > 0.99


def test_a_ranking_at_chance_is_flagged():
    """With nearly no hammers and a small budget every r predicts chance for the label-only
    methods: the command says their ranking rests on nothing it could train on."""
    done = run_script("plan.py", "--gamma", "0.02", "--workers", "20", "--budget", "300", "--redundancy", "1,3",
                      "--repeats", 2, "--algorithms", "mv,oracle")
    assert done.returncode == 0, done.stderr
    assert "warning: mv, oracle: predicted near chance (0.90) at every r" in done.stdout
    healthy = run_script("plan.py", "--gamma", "0.8", "--workers", "20", "--budget", "3000", "--redundancy", "1,3",
                         "--repeats", 2)
    assert healthy.returncode == 0 and "near chance" not in healthy.stdout


def test_the_planners_mbem_takes_the_m_step_mbem_py_is_given():
    """With the model right on half its items, the release's step rates every hammer at the model's
    accuracy, and the corrected steps near 1: their targets at r = 1 are worth more, as
    bench/targets.py measured on the committed bootstrap files; the command takes the step by name."""
    pool = planning.simulated_pool(100, 10, 0.2, "hammer-spammer", np.random.default_rng(0))
    ann, truth = planning.collection(pool, 20000, 1, np.random.default_rng(1))
    worth = {step: planning.worth(planning.targets("mbem", ann, pool, truth, np.random.default_rng(2), rho=0.5,
                                                   mbem_step=step), truth)[1] for step in agg.MBEM_STEPS}
    oracle = planning.worth(planning.targets("oracle", ann, pool, truth, None), truth)[1]
    assert worth["release"] < 0.8 * worth["one-coin"] and worth["one-coin"] <= oracle * 1.05
    assert worth["per-class-coin"] > worth["release"]
    result = run_script("plan.py", "--budget", "3000", "--workers", "30", "--redundancy", "1,3", "--repeats", "2",
                        "--algorithms", "mbem", "--mbem-step", "one-coin")
    assert result.returncode == 0 and "recommended r: mbem " in result.stdout, result.stderr
