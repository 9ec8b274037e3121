"""The budget planner (plan.py) checked at scale on a cheap problem: scikit-learn's digits, a small
network, simulated crowds of both worker models at gamma 0.1 to 0.9, two budgets, several seeds.
For each setting every redundancy is trained with every method (MV, WMV, label-only EM and MBEM,
as MBEM.py makes their targets), and the r that measured best is set against the r the planner
recommends for the same workers, with the planner given only what a user would have: the crowd
and the network's learning curve on clean labels (measured here first).

    python bench/plan_sweep.py                      # about 4 minutes on 2 cores
    python bench/plan_sweep.py --gammas 0.2,0.6 --seeds 2 --out /tmp/sweep.csv

Prints, per method and worker model, how often the planned r was the measured best, and the regret:
the measured error at the planned r minus the best measured error (mean over settings), beside the
regret of the two fixed rules a user might follow instead, always the smallest r (the paper's
advice) and always the largest.

The network: 64 -> 64 ReLU -> 10, SGD with Nesterov momentum 0.9, batch 32, 40 epochs at learning
rate 0.05, the soft-target cross-entropy; 1,297 training and 500 test images, fixed.
"""

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
import noise_sim
from mbemlib import aggregation as agg
from mbemlib import planning

METHODS = ("mv", "wmv", "em", "mbem")
HIDDEN, EPOCHS, BATCH, LR, MOMENTUM = 64, 40, 32, 0.05, 0.9


def digits():
    """(train x, train y, test x, test y): standardised by the training images' statistics."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(12345).permutation(len(y))
    train, test = order[:1297], order[1297:]
    mean, sd = x[train].mean(axis=0), x[train].std(axis=0) + 1e-6
    x = ((x - mean) / sd).astype(np.float64)
    return x[train], y[train], x[test], y[test]


def train(x, targets, rng):
    """The small network trained on soft targets; returns a function images -> probabilities."""
    d, K = x.shape[1], targets.shape[1]
    w1 = rng.normal(0, np.sqrt(2 / d), (d, HIDDEN))
    w2 = rng.normal(0, np.sqrt(1 / HIDDEN), (HIDDEN, K))
    b1, b2 = np.zeros(HIDDEN), np.zeros(K)
    params = [w1, b1, w2, b2]
    velocity = [np.zeros_like(p) for p in params]
    for _ in range(EPOCHS):
        order = rng.permutation(len(x))
        for start in range(0, len(x), BATCH):
            idx = order[start:start + BATCH]
            h = np.maximum(x[idx] @ w1 + b1, 0)
            logits = h @ w2 + b2
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            g_logits = (p - targets[idx]) / len(idx)
            g_h = (g_logits @ w2.T) * (h > 0)
            grads = [x[idx].T @ g_h, g_h.sum(axis=0), h.T @ g_logits, g_logits.sum(axis=0)]
            for param, v, g in zip(params, velocity, grads, strict=True):  # Nesterov momentum, in place
                v *= MOMENTUM
                v -= LR * g
                param += MOMENTUM * v - LR * g

    def predict(images):
        logits = np.maximum(images @ w1 + b1, 0) @ w2 + b2
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    return predict


def test_error(x, targets, x_test, y_test, rng):
    return float((train(x, targets, rng)(x_test).argmax(axis=1) != y_test).mean())


def learning_curve(data, sizes, seeds):
    """(items, mean clean test error) of the network: what the planner is told."""
    x, y, x_test, y_test = data
    return [(n, float(np.mean([test_error(x[:n], agg.one_hot(y[:n], 10), x_test, y_test, np.random.default_rng(s))
                               for s in range(seeds)]))) for n in sizes]


def noisy_run(data, accuracy, seeds):
    """(items, accuracy, mean test error, mean share of training items predicted as labelled) of the
    network on all training items, hard labels right with probability `accuracy` and errors
    uniform: the one noisy run the planner is told of."""
    x, y, x_test, y_test = data
    errors, agreements = [], []
    for s in range(seeds):
        rng = np.random.default_rng([s, 99])
        labels = planning.model_predictions(y, accuracy, 10, rng)  # right on a share, else another class uniformly
        predict = train(x, agg.one_hot(labels, 10), rng)
        errors.append(float((predict(x_test).argmax(axis=1) != y_test).mean()))
        agreements.append(float((predict(x).argmax(axis=1) == labels).mean()))
    return len(y), accuracy, float(np.mean(errors)), float(np.mean(agreements))


def measure(data, pool, budget, r, seed):
    """{method: test error} of one collection: n = budget // r items, r distinct workers each."""
    x, y, x_test, y_test = data
    n = budget // r
    rng = np.random.default_rng([seed, r, budget])
    ann = agg.Annotations(*noise_sim.simulate_labels(y[:n], pool.confusions, r, rng), n, len(pool.confusions), 10)
    found = {}
    for method in ("mv", "wmv", "em"):
        targets = agg.aggregate(ann, method, np.random.default_rng([seed, r, budget, len(found)])).posterior
        found[method] = test_error(x[:n], targets, x_test, y_test, np.random.default_rng([seed, r, budget, 7]))
    bootstrap = train(x[:n], agg.weighted_majority_vote(ann), np.random.default_rng([seed, r, budget, 7]))
    targets = agg.mbem_step(ann, bootstrap(x[:n]))[0]  # Algorithm 1, one round, as the release
    found["mbem"] = test_error(x[:n], targets, x_test, y_test, np.random.default_rng([seed, r, budget, 8]))
    return found


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gammas", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    p.add_argument("--worker-models", default="hammer-spammer,class-wise")
    p.add_argument("--budgets", default="600,1200")
    p.add_argument("--redundancy", default="1,2,3,5")
    p.add_argument("--workers", type=int, default=20)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--noisy-accuracy", type=float, default=0.5,
                   help="the label accuracy of the one noisy run that sets the planner's lambda and mu (1: no run, "
                   "both 0)")
    p.add_argument("--repeating", action=argparse.BooleanOptionalAction, default=True,
                   help="tell the planner the noisy run's share of training items predicted as labelled (mu)")
    p.add_argument("--out", help="also write every setting's row to this CSV")
    args = p.parse_args(argv)
    gammas = [float(g) for g in args.gammas.split(",")]
    budgets = [int(b) for b in args.budgets.split(",")]
    redundancies = [int(r) for r in args.redundancy.split(",")]
    data, started = digits(), time.time()
    curve_points = learning_curve(data, (100, 300, 1000, 1297), args.seeds)
    classifier = planning.Classifier.fit(curve_points, 10)
    noisy = noisy_run(data, args.noisy_accuracy, args.seeds) if args.noisy_accuracy < 1 else None
    if noisy:
        classifier = classifier.with_noisy_run(*noisy[:3], 10, *noisy[3:] if args.repeating else ())
    print("clean learning curve: " + ", ".join(f"{n}:{e:.4f}" for n, e in curve_points) +
          f" (fitted c {classifier.c:.3f}, beta {classifier.beta:.3f}); noisy run " +
          (":".join(f"{v:.4g}" for v in noisy) if noisy else "none") +
          f"; lambda {classifier.copying:.3f}, mu {classifier.repeating:.3f}", flush=True)
    rows = []
    for model in args.worker_models.split(","):
        for gamma in gammas:
            for budget in budgets:
                pools = [planning.simulated_pool(args.workers, 10, gamma, model, np.random.default_rng(s))
                         for s in range(args.seeds)]
                errors = {(s, r): measure(data, pools[s], budget, r, s)
                          for s in range(args.seeds) for r in redundancies}
                table, best = planning.summary(planning.plan(pools, budget, redundancies, METHODS, classifier), METHODS)
                for method in METHODS:
                    mean = {r: np.mean([errors[s, r][method] for s in range(args.seeds)]) for r in redundancies}
                    measured_best = min(mean, key=mean.get)
                    planned = best[method][0]
                    regret = mean[planned] - mean[measured_best]
                    rows.append((model, gamma, budget, method, measured_best, planned, regret,
                                 *[mean[r] for r in redundancies], *[table[method][r][3][0] for r in redundancies]))
                print(f"{model} gamma {gamma} budget {budget}: measured best r " +
                      ", ".join(f"{row[3]} {row[4]}" for row in rows[-4:]) + "; planned " +
                      ", ".join(f"{row[3]} {row[5]}" for row in rows[-4:]) + f" ({time.time() - started:.0f} s)",
                      flush=True)
    first, last = 7, 7 + len(redundancies) - 1  # the measured errors at the smallest and the largest r
    print(f"\n| worker model | method | planned r = measured best | mean regret | largest regret | "
          f"regret of always r = {redundancies[0]} | of always r = {redundancies[-1]} |")
    print("|---|---|---|---|---|---|---|")
    for model in args.worker_models.split(","):
        for method in METHODS:
            mine = [row for row in rows if row[0] == model and row[3] == method]
            hits = sum(row[4] == row[5] for row in mine)
            regret = [row[6] for row in mine]
            best_error = [min(row[first:last + 1]) for row in mine]
            always = [np.mean([row[col] - b for row, b in zip(mine, best_error, strict=True)]) for col in (first, last)]
            print(f"| {model} | {method} | {hits} of {len(mine)} | {np.mean(regret):.4f} | {np.max(regret):.4f} | "
                  f"{always[0]:.4f} | {always[1]:.4f} |")
    if args.out:
        import pandas as pd

        columns = ["worker_model", "gamma", "budget", "method", "measured_best_r", "planned_r", "regret",
                   *[f"measured_error_r{r}" for r in redundancies], *[f"predicted_error_r{r}" for r in redundancies]]
        pd.DataFrame(rows, columns=columns).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
