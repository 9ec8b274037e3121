"""The Python API: crowd labels in, each item's posterior and each worker's confusion matrix out,
for every label-only method and for MBEM's step from your own classifier's probabilities.

Labels come as a pandas DataFrame with columns item, worker, label (crowd-kit's convention), or
as three equal-length sequences; items, workers and labels may be any hashable values. Classes
are the distinct labels, sorted (and, for `mbem`, the columns of the model's probabilities).

    import pandas as pd
    from mbemlib import api

    answers = pd.DataFrame({"item": ["a", "a", "b"], "worker": ["w1", "w2", "w1"], "label": ["cat", "dog", "dog"]})
    result = api.aggregate(answers, method="em")
    result.posterior     # DataFrame: a row per item, a column per class, rows sum to 1
    result.labels        # Series: each item's most probable class
    result.confusions    # DataFrame: worker, true_label, given_label, probability

The model behind every method (Dawid and Skene 1979): worker a answers l for an item of true
class k with probability pi_a[k, l], independently across workers and items; the posterior of
an item's class is proportional to q[k] prod_a pi_a[k, label_a] (aggregation.py states each
estimator's M- and E-step).
"""

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mbemlib import aggregation as agg
from mbemlib import planning as planner
from mbemlib.label_files import model_table, relabel, sort_classes


@dataclass
class Result:
    posterior: pd.DataFrame  # item x class
    labels: pd.Series  # item -> most probable class
    confusions: pd.DataFrame  # worker, true_label, given_label, probability (long form)
    iterations: int = 0


def encode(answers, workers=None, labels=None):
    """(Annotations, item names, worker names, classes) from a DataFrame or three sequences.
    ValueError for a missing value, unequal lengths, a repeated (item, worker) or a single class."""
    if workers is None:
        frame = answers
        missing = [c for c in ("item", "worker", "label") if c not in frame.columns]
        if missing:
            raise ValueError(f"the DataFrame has no column {', '.join(missing)} (it needs item, worker, label)")
        answers, workers, labels = frame["item"], frame["worker"], frame["label"]
    columns = [pd.Series(np.asarray(c, dtype=object)) for c in (answers, workers, labels)]
    if len({len(c) for c in columns}) != 1 or not len(columns[0]):
        raise ValueError("items, workers and labels must be non-empty and of one length")
    if any(c.isna().any() for c in columns):
        raise ValueError("a missing item, worker or label")
    (items, item_names), (who, worker_names) = (pd.factorize(c, sort=False) for c in columns[:2])
    classes = sort_classes(list(pd.unique(columns[2])))  # numbers in numeric order, as label_files reads a CSV
    if len(classes) < 2:
        raise ValueError(f"every label is {classes[0]!r}: aggregation needs at least two classes")
    if pd.Series(items * len(worker_names) + who).duplicated().any():
        raise ValueError("a worker labelled the same item twice")
    rank = {c: k for k, c in enumerate(classes)}
    codes = np.array([rank[v] for v in columns[2]], dtype=np.int64)
    ann = agg.Annotations(items.astype(np.int64), who.astype(np.int64), codes, len(item_names), len(worker_names),
                          len(classes))
    return ann, list(item_names), list(worker_names), classes


def result(posterior, confusions, item_names, worker_names, classes, iterations=0):
    table = pd.DataFrame(posterior, index=pd.Index(item_names, name="item"), columns=classes)
    m, K, _ = confusions.shape
    long = pd.DataFrame({"worker": np.repeat(worker_names, K * K), "true_label": np.tile(np.repeat(classes, K), m),
                         "given_label": np.tile(classes, m * K), "probability": confusions.ravel()})
    return Result(table, table.idxmax(axis=1).rename("label"), long, iterations)


def aggregate(answers, workers=None, labels=None, method="em", seed=0, max_iter=agg.MAX_ITER, tol=agg.TOL):
    """Posteriors and confusions by a label-only method: mv (majority vote, ties broken at random
    with `seed`), wmv (label frequencies) or em (Dawid-Skene EM from the wmv start; `ds` is
    accepted). MV's and WMV's confusions are counted against their own posterior."""
    method = agg.canonical(method)
    if method not in agg.LABEL_ONLY:
        raise ValueError(f"method {method!r}: choose from {', '.join(agg.LABEL_ONLY)} (mbem: api.mbem)")
    ann, item_names, worker_names, classes = encode(answers, workers, labels)
    fit = agg.aggregate(ann, method, np.random.default_rng(seed), max_iter, tol)
    if not fit.converged:
        warnings.warn(f"Dawid-Skene stopped at max_iter={max_iter} before converging (tol {tol})", stacklevel=2)
    return result(fit.posterior, fit.confusions, item_names, worker_names, classes, fit.iterations)


def mbem(answers, model_probs, workers=None, labels=None, class_prior=False, step="release"):
    """MBEM's M-step and E-step (the paper's Algorithm 1, steps 2c-2d) from a classifier's
    predicted probabilities: take t_i = argmax of the model as item i's true class, estimate every
    worker's confusion from the items they labelled (the M-step), and recompute each item's
    posterior from its labels (the E-step; with class_prior, times q[k], the share of items the
    model puts in class k: the paper's form; without, the release's).

    step: the M-step, as MBEM.py's --mbem-step: "release" (the paper's: a full confusion per
    worker, as if the model were right), "one-coin" (one accuracy per worker, corrected for the
    model's own accuracy: the step docs/beyond-mbem.md recommends) or "per-class-coin" (one per
    worker and class, corrected for the model's precision on each class).

    model_probs: a DataFrame indexed by item with one column per class (or `p_<class>` columns,
    as aggregation.py's CSVs name them), rows summing to 1, covering every labelled item; its
    columns are the classes, and every label must be one of them."""
    ann, item_names, worker_names, label_classes = encode(answers, workers, labels)
    probs, classes = model_table(model_probs, item_names)
    ann = relabel(ann, label_classes, classes)
    posterior, confusions = agg.mbem_update(ann, probs, step, class_prior)
    return result(posterior, confusions, item_names, worker_names, classes)


def plan(answers=None, workers=None, labels=None, *, budget, redundancy=(1, 2, 3, 5, 7, 9),
         methods=planner.DEFAULT_METHODS, learning_curve=planner.DEFAULT_CURVE, noisy_run=None, repeats=5,
         seed=0, simulated=None, mbem_step="release"):
    """How many labels per item a budget should buy (plan.py's model, docs/planning.md): from pilot
    labels (as `aggregate` takes them, some items labelled more than once) or, with `simulated`,
    a simulated crowd: dict(workers=100, gamma=0.2, worker_model="hammer-spammer", classes=10).
    learning_curve: (items, test error) points of your classifier on clean labels; noisy_run: one
    run on noisy labels, (items, label accuracy, test error[, share of training items predicted as
    labelled]), as plan.py's --noisy-run; mbem_step: MBEM's M-step, as MBEM.py's --mbem-step.

    Returns (a DataFrame with a row per method and r: items, target_accuracy, clean_equivalent,
    predicted_error and each one's _sd over repeats; {method: recommended r})."""
    if simulated is None:
        ann, *_ = encode(answers, workers, labels)
        pools = planner.pilot_pools(ann, repeats, seed)
    else:
        crowd = dict(workers=100, gamma=0.2, worker_model="hammer-spammer", classes=10) | dict(simulated)
        pools = planner.simulated_pools(repeats, crowd["workers"], crowd["classes"], crowd["gamma"],
                                        crowd["worker_model"], seed)
    classifier = planner.Classifier.of(learning_curve, pools[0].K, noisy_run)
    rows = planner.plan(pools, budget, sorted(set(redundancy)), methods, classifier, seed, mbem_step)
    table, best = planner.summary(rows, methods)
    return planner.frame(table), {method: r for method, (r, _) in best.items()}
