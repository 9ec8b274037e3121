"""How good are a worker estimator's training targets? Scored offline, with no training: a results
folder's labels (regenerated from its config, exactly as MBEM.py drew them: each bootstrap file's
labels digest is checked), the bootstrap model's predictions saved beside them, and the simulated
truth. The oracle (the true confusions) is the ceiling, the release's MBEM step the floor.

    python bench/targets.py results/cpu                 # every seed at every r of the folder
    python bench/targets.py results/cpu --redundancy 1

Per estimator and r, the mean over seeds of:
  acc         the share of items whose target's argmax is the true class (a flat row counts as
              its first class, as argmax has it: the oracle's spammer rows are flat);
  p_true      the mean probability the target gives the true class (what the soft-target loss
              pulls the network towards);
  log p_true  its mean log (floor 1e-12): the cross-entropy of the targets against the truth;
  sure right  the share of items whose target gives the true class at least 0.9;
  sure wrong  the share whose target gives one wrong class at least 0.5;
  worker MAE  the mean absolute error of each worker's accuracy (its confusion's mean diagonal);
  worth       what each item's target is worth in clean items to plan.py's averaging learner,
              E[s]^2 / E[|t - u|^2 / |e_y - u|^2] with s = (K t_y - 1) / (K - 1) (docs/planning.md).
A line per seed follows with MBEM's and each candidate's p_true, to show the spread.

Estimators (aggregation.py has each, with its model and assumptions):
  oracle           the true confusions (the ceiling for targets from labels alone);
  mbem             the release's step: the model's predictions taken for the truth;
  annotator        Dawid-Skene with the model as one more annotator, targets from the labels;
  annotator+model  the same, the model's vote in the targets too;
  one-coin         one-coin workers, the model's accuracy rho estimated (the best workers perfect);
  one-coin rho     the same given the model's true accuracy on its items (a diagnostic: it uses
                   the truth, as a small set of known items would give it);
  soft mbem        the release's step from the model's probabilities, not its argmax (only where
                   the bootstrap file keeps them);
  per-class coin   a coin per worker and class, the model's precision on each class estimated
                   (the best workers on each class perfect there);
  per-class rho    the same given the model's true precision on each class (a diagnostic);
  plan's mbem      the release's step from plan.py's stand-in for the bootstrap model, right as
                   often as the real one, its errors uniform: how far the planner's model of
                   MBEM's targets is from the real ones.
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
import noise_sim
from MBEM import Experiment, load_images
from mbemlib import aggregation as agg
from mbemlib import planning, settings, store


def candidates(ann, probs, workers, truth, soft=False):
    """name -> (targets n x K, confusions m x K x K) of each estimator; soft: `probs` are the model's
    probabilities (not one-hot predictions), so the soft M-step is scored too."""
    predicted = probs.argmax(axis=1)
    oracle = np.maximum(workers, agg.RELEASE_ZERO)
    oracle = oracle / oracle.sum(axis=2, keepdims=True)
    found = {"oracle": (agg.posterior(ann, oracle), oracle)}
    targets, confusions, _ = agg.mbem_step(ann, probs)
    found["mbem"] = (targets, confusions)
    if soft:
        targets, confusions, _ = agg.mbem_step(ann, probs, hard=False)
        found["soft mbem"] = (targets, confusions)
    targets, confusions, model = agg.model_as_annotator(ann, probs, use_model=False)
    found["annotator"] = (targets, confusions)
    found["annotator's model"] = float(np.diagonal(model).mean())  # the model's accuracy as Dawid-Skene has it
    targets, confusions, _ = agg.model_as_annotator(ann, probs, use_model=True)
    found["annotator+model"] = (targets, confusions)
    targets, confusions, rho = agg.one_coin_step(ann, probs)
    found["one-coin"] = (targets, confusions)
    found["rho"] = rho  # the model's accuracy as one-coin estimates it
    targets, confusions, _ = agg.one_coin_step(ann, probs, model_accuracy=float((predicted == truth).mean()))
    found["one-coin rho"] = (targets, confusions)
    targets, confusions, _ = agg.per_class_coin_step(ann, probs)
    found["per-class coin"] = (targets, confusions)
    precision = [(truth[predicted == k] == k).mean() if (predicted == k).any() else 1.0 for k in range(ann.K)]
    targets, confusions, _ = agg.per_class_coin_step(ann, probs, model_precision=precision)
    found["per-class rho"] = (targets, confusions)
    # plan.py's stand-in for the bootstrap model: as often right, its errors uniform
    stand_in = planning.model_predictions(truth, float((predicted == truth).mean()), ann.K, np.random.default_rng(0))
    targets, confusions, _ = agg.mbem_step(ann, agg.one_hot(stand_in, ann.K))
    found["plan's mbem"] = (targets, confusions)
    return found


def scores(targets, confusions, truth, workers, ann):
    p_true = targets[np.arange(len(truth)), truth]
    wrong = targets.copy()
    wrong[np.arange(len(truth)), truth] = 0
    active = np.bincount(ann.workers, minlength=ann.m) > 0
    mae = np.abs(agg.worker_accuracy(confusions) - agg.worker_accuracy(workers))[active].mean()
    return {"acc": float((targets.argmax(axis=1) == truth).mean()), "p_true": float(p_true.mean()),
            "log p_true": float(np.log(np.maximum(p_true, 1e-12)).mean()), "sure right": float((p_true >= 0.9).mean()),
            "sure wrong": float((wrong.max(axis=1) >= 0.5).mean()), "worker MAE": float(mae),
            "worth": planning.worth(targets, truth)[1]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="a results folder of simulated workers with bootstrap/ files")
    p.add_argument("--redundancy", help="comma-separated r to score (default: every r with bootstrap files)")
    args = p.parse_args(argv)
    os.chdir(ROOT)  # a folder's config names its data relative to the checkout
    config = settings.saved_config(args.folder)
    if config.annotations:
        p.error(f"{args.folder}: real labels have no simulated truth to score targets against")
    ds = load_images(config)
    experiment = Experiment(config, ds, writer=False)
    wanted = None if args.redundancy is None else {int(r) for r in args.redundancy.split(",")}
    table, per_seed = {}, []
    for seed in config.seeds:
        workers = noise_sim.simulate_workers(config.workers, len(ds.classes), config.gamma,
                                             np.random.default_rng(seed), config.worker_model, config.group_size)
        for r, n in experiment.plan:
            path = store.bootstrap_path(args.folder, seed, r, n)
            if (wanted and r not in wanted) or not os.path.exists(path):
                continue
            items, ann, _ = experiment.labels(seed, r, n, workers)
            predicted = store.load_bootstrap(path, ann)
            if predicted is None:
                p.error(f"{path} does not hold the predictions for these labels (its labels digest differs)")
            probs = store.bootstrap_probabilities(path)
            soft = probs is not None
            probs = probs if soft else agg.one_hot(predicted, ann.K)
            truth = ds.train_labels[items]
            found = candidates(ann, probs, workers, truth, soft)
            rho, fitted = found.pop("rho"), found.pop("annotator's model")
            for name, (targets, confusions) in found.items():
                table.setdefault((r, name), []).append(scores(targets, confusions, truth, workers, ann))
            per_seed.append((r, seed, float((predicted == truth).mean()), rho, fitted,
                             {name: table[r, name][-1]["p_true"] for name in found}))
    if not table:
        p.error(f"{args.folder}: no bootstrap files for the redundancies asked for")
    metrics = list(next(iter(table.values()))[0])
    print(f"{args.folder}: {config.worker_model} gamma {config.gamma}, budget {config.budget}; means over seeds")
    print(f"{'r':>2} {'estimator':16} {'seeds':>5} " + " ".join(f"{m:>10}" for m in metrics))
    for (r, name), rows in table.items():
        print(f"{r:>2} {name:16} {len(rows):>5} " + " ".join(f"{np.mean([x[m] for x in rows]):>10.4f}"
                                                            for m in metrics))
    print("p_true per seed (model: the bootstrap model's accuracy on its items; rho: one-coin's estimate of it; "
          "fitted: the annotator's estimate, its confusion's mean diagonal)")
    for r, seed, model, rho, fitted, row in per_seed:
        shown = " ".join(f"{k} {v:.4f}" for k, v in row.items())
        print(f"   r {r} seed {seed} model {model:.3f} rho {rho:.3f} fitted {fitted:.3f} {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
