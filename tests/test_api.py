"""The Python API (api.py): DataFrames or arrays in, the estimators' posteriors and confusions
out, MBEM's step from a model's probabilities, the README's example run verbatim."""

import os
import re

import numpy as np
import pandas as pd
import pytest

import noise_sim
from conftest import ROOT
from mbemlib import aggregation as agg
from mbemlib import api


@pytest.fixture(scope="module")
def simulated():
    """600 items, 30 hammer-spammer workers, 3 labels each, class names as strings, shuffled rows."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 600)
    items, workers, labels = noise_sim.simulate_labels(truth, noise_sim.hammer_spammer(30, 4, 0.4, rng), 3, rng)
    order = rng.permutation(len(items))
    frame = pd.DataFrame({"item": [f"img{i}" for i in items[order]], "worker": [f"w{w}" for w in workers[order]],
                          "label": [f"c{k}" for k in labels[order]]})
    return frame, truth


@pytest.mark.filterwarnings("ignore:Dawid-Skene stopped")  # 100 iterations do not settle these labels
@pytest.mark.parametrize("method", ["mv", "wmv", "em", "ds"])
def test_aggregate_is_the_estimator_on_the_same_labels(simulated, method):
    frame, _ = simulated
    result = api.aggregate(frame, method=method)
    ann, items, workers, classes = api.encode(frame)
    fit = agg.aggregate(ann, agg.canonical(method), np.random.default_rng(0))
    expected, confusions = fit.posterior, fit.confusions
    assert list(result.posterior.index) == items
    assert list(result.posterior.columns) == classes == ["c0", "c1", "c2", "c3"]
    assert np.allclose(result.posterior.to_numpy(), expected)
    assert (result.labels == result.posterior.idxmax(axis=1)).all()
    row = result.confusions.iloc[len(classes) * len(classes) + 1]  # worker 1, true class 0, given class 1
    assert (row.worker, row.true_label, row.given_label) == (workers[1], "c0", "c1")
    assert row.probability == pytest.approx(confusions[1, 0, 1])
    same = api.aggregate(frame["item"], frame["worker"], frame["label"], method=method)  # three sequences
    assert same.posterior.equals(result.posterior)


def test_mbem_from_a_models_probabilities_is_the_paper_step(simulated):
    frame, truth = simulated
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), 600)
    model = pd.DataFrame(probs, index=[f"img{i}" for i in range(600)], columns=[f"p_c{k}" for k in range(4)])
    result = api.mbem(frame, model.sample(frac=1, random_state=0))  # row order does not matter
    ann, items, _, _ = api.encode(frame)
    order = [int(i[3:]) for i in items]
    expected, _, _ = agg.mbem_step(ann, probs[order])
    assert np.allclose(result.posterior.to_numpy(), expected)
    oracle = pd.DataFrame(np.eye(4)[truth], index=model.index, columns=["c0", "c1", "c2", "c3"])
    right = (api.mbem(frame, oracle).labels.to_numpy() == np.array([f"c{truth[i]}" for i in order]))
    assert right.mean() > (api.aggregate(frame, method="mv").labels.to_numpy() == np.array(
        [f"c{truth[i]}" for i in order])).mean()  # a perfect model finds the hammers


@pytest.mark.parametrize("step", ["one-coin", "per-class-coin"])
def test_mbem_takes_the_corrected_steps_by_name(simulated, step):
    """step= is MBEM.py's --mbem-step: aggregation's step of that name on the same labels and model,
    and with a model right on 70% of the items the one-coin step is closer to the hammers' and
    spammers' accuracies than the release's (which rates a perfect worker as the model)."""
    frame, truth = simulated
    ann, items, workers, _ = api.encode(frame)
    order = np.array([int(i[3:]) for i in items])
    rng = np.random.default_rng(2)
    predicted = np.where(rng.random(600) < 0.7, truth, rng.integers(0, 4, 600))
    probs = np.eye(4)[predicted]
    model = pd.DataFrame(probs, index=[f"img{i}" for i in range(600)], columns=["c0", "c1", "c2", "c3"])
    result = api.mbem(frame, model, step=step)
    expected, confusions, _ = agg.MBEM_STEPS[step](ann, probs[order])
    assert np.allclose(result.posterior.to_numpy(), expected)
    estimated = result.confusions.pivot_table(index="worker", columns=["true_label", "given_label"],
                                              values="probability", sort=False).loc[workers]
    assert np.allclose(estimated.to_numpy().reshape(confusions.shape), confusions)
    if step == "one-coin":
        rng = np.random.default_rng(0)  # the fixture's draws: the truth, then the workers
        rng.integers(0, 4, 600)
        true_accuracy = agg.worker_accuracy(noise_sim.hammer_spammer(30, 4, 0.4, rng))[[int(w[1:]) for w in workers]]
        error = {s: np.abs(agg.worker_accuracy(agg.MBEM_STEPS[s](ann, probs[order])[1]) - true_accuracy).mean()
                 for s in ("release", "one-coin")}
        assert error["one-coin"] < error["release"] / 2, error


def test_mbem_refuses_an_unknown_step(simulated):
    frame, _ = simulated
    model = pd.DataFrame(np.full((600, 4), 0.25), index=[f"img{i}" for i in range(600)],
                         columns=["c0", "c1", "c2", "c3"])
    with pytest.raises(ValueError, match="one of release, one-coin, per-class-coin"):
        api.mbem(frame, model, step="two-coin")


@pytest.mark.parametrize("change, message", [
    (lambda f, m: (f.drop(columns="worker"), m), "no column worker"),
    (lambda f, m: (pd.concat([f, f.iloc[:1]]), m), "labelled the same item twice"),
    (lambda f, m: (f.assign(label="c0"), m), "at least two classes"),
    (lambda f, m: (f, m.iloc[1:]), "no row for 1 labelled items"),
    (lambda f, m: (f, m * 2), "summing to 1"),
    (lambda f, m: (f.assign(label=f.label.replace("c3", "c9")), m), "not columns of the model"),
])
def test_bad_input_is_one_clear_error(simulated, change, message):
    frame, _ = simulated
    model = pd.DataFrame(np.full((600, 4), 0.25), index=[f"img{i}" for i in range(600)],
                         columns=["c0", "c1", "c2", "c3"])
    frame, model = change(frame, model)
    with pytest.raises(ValueError, match=message):
        api.mbem(frame, model)


def test_the_readme_example_runs_verbatim():
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert len(blocks) == 1
    scope = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)  # noqa: S102 (our own README)
    assert list(scope["result"].labels.index) == ["img1", "img2", "img3"]


def test_classes_in_the_order_a_label_csv_gets():
    """Numbers in numeric order ("9" before "10"), as aggregation.py orders a CSV's labels."""
    from mbemlib import label_files

    answers = pd.DataFrame({"item": ["a", "a", "b", "c"], "worker": ["w1", "w2", "w1", "w2"],
                            "label": ["10", "9", "2", "10"]})
    assert list(api.aggregate(answers, method="mv").posterior.columns) == ["2", "9", "10"]
    assert label_files.sort_classes(["10", "9", "2"]) == ["2", "9", "10"]
    assert label_files.sort_classes([("b", 1), ("a", 2)]) == [("a", 2), ("b", 1)]  # not numbers: sorted as they are
