"""Crowd Layer and CoNAL: which optimizer trains each best? Chosen once, on a small CIFAR-10 setting,
by the error against noisy labels on held-out items (never the test set).

    python bench/crowd_sweep.py                       # 4,000 items at r = 1, 20 epochs, seed 0
    python bench/crowd_sweep.py --seeds 0,1 --omega features,image

The setting is the `cpu` preset's shrunk: 100 hammer-spammer workers (gamma 0.2) drawn as MBEM.py
draws them, the first --items images of MBEM.py's fixed shuffle labelled once each, the next
--val-items labelled once each by the same workers as the validation split, ResNet-20, batch 128.
Each method trains with each optimizer (MBEM.py's --crowdlayer-optimizer, --conal-optimizer):
  release   the network on the release's NAG schedule, the crowd head with Adam at its authors'
            rate (Crowd Layer 1e-3, CoNAL 1e-2);
  authors   the whole network and head with Adam at the authors' rate, constant.
Majority vote (the labels as one-hot targets, the release's recipe) is the peer every figure is
read against. Per run: the validation error against the held-out noisy labels (which a model
minimises by predicting the true class, as spammers' labels are uniform), the test error (shown,
never chosen on), the worker-accuracy error of the head's confusions, and the seconds it took.
The last lines name, per method, the optimizer with the lower mean validation error.
"""

import argparse
import os
import sys
import time
from dataclasses import replace

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
import MBEM
import noise_sim
from mbemlib import aggregation as agg
from mbemlib import report, settings


def crowd(seed, truth, items, val_items, workers, K):
    """The labels of the items (r = 1) and one noisy label for each validation item, as MBEM.py's
    simulation draws them (its rng for (seed, r, n); the validation draw a stream of its own)."""
    labels = noise_sim.simulate_labels(truth[items], workers, 1, np.random.default_rng([seed, 1, len(items)]))
    ann = agg.Annotations(*labels, len(items), len(workers), K)
    val_items_of, _, val_labels = noise_sim.simulate_labels(truth[val_items], workers, 1,
                                                            np.random.default_rng([seed, 1, len(val_items), 1]))
    noisy = np.empty(len(val_items), dtype=np.int64)
    noisy[val_items_of] = val_labels
    return ann, noisy


def run(trainer, ds, items, ann, val, workers, method, optimizer, omega, options, seed):
    """One training: (validation error against noisy labels, test error, worker-accuracy MAE, seconds)."""
    from mbemlib import crowd_methods

    start, K = time.perf_counter(), ann.K
    images = ds.train_images[items]
    if method == "mv":
        rng = np.random.default_rng([seed, 1, len(items), agg.REGISTRY["mv"].seed])  # as MBEM.py's MV cell
        targets = agg.one_hot(agg.majority_vote(ann, rng), K)
        model, history = trainer.train(images, targets, K, val=val, seed=seed, **options)
        mae = None
    else:
        head = crowd_methods.HEADS[method](K, ann.m, optimizer, **({"omega": omega, "seed": seed} if method == "conal"
                                                                    else {}))
        model, history = trainer.train(images, agg.weighted_majority_vote(ann), K, val=val, seed=seed,
                                       crowd=(head, *crowd_methods.padded(ann)), **options)
        mae = report.worker_fields(ann, head.confusions(), agg.worker_accuracy(workers))["worker_accuracy_mae"]
    test = trainer.accuracy(model, ds.test_images, ds.test_labels)
    return 1 - history[-1]["val_acc"], 1 - test, mae, time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg.tar.gz"))
    p.add_argument("--items", type=int, default=4000)
    p.add_argument("--val-items", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seeds", default="0")
    p.add_argument("--methods", default="crowdlayer,conal")
    p.add_argument("--optimizers", default="release,authors")
    p.add_argument("--omega", default="features", help="conal's omega inputs to try (features, image)")
    p.add_argument("--precision", default="auto")
    args = p.parse_args(argv)
    if not os.path.exists(args.source):
        p.error(f"{args.source} not found (../shared/data holds CIFAR-10 as JPEGs beside developer checkouts)")
    config = replace(settings.Config(), dataset="folder", source=args.source, backend="torch")
    ds = MBEM.load_images(config)
    trainer = MBEM.trainer("torch")
    precision = trainer.resolve_precision(args.precision)
    K = len(ds.classes)
    pool = np.random.default_rng(MBEM.SPLIT_SEED).permutation(len(ds.train_images))
    items, val_items = pool[:args.items], pool[args.items:args.items + args.val_items]
    options = dict(depth=20, epochs=args.epochs, batch_size=128, select_epoch="last", precision=precision,
                   progress=False)
    runs = [("mv", "release", "features")]
    for method in args.methods.split(","):
        for optimizer in args.optimizers.split(","):
            for omega in args.omega.split(",") if method == "conal" else ["features"]:
                runs.append((method, optimizer, omega))
    print(f"{args.items} items at r = 1 (hammer-spammer, gamma 0.2, 100 workers), {args.val_items} validation items "
          f"with noisy labels, ResNet-20, {args.epochs} epochs, batch 128, {precision}", flush=True)
    print(f"{'method':<11} {'optimizer':<9} {'omega':<9} {'seed':>4} {'val error':>9} {'test error':>10} "
          f"{'/ MV':>6} {'worker MAE':>10} {'seconds':>8}", flush=True)
    rows = []
    for seed in map(int, args.seeds.split(",")):
        workers = noise_sim.simulate_workers(100, K, 0.2, np.random.default_rng(seed), "hammer-spammer")
        ann, noisy = crowd(seed, ds.train_labels, items, val_items, workers, K)
        val = (ds.train_images[val_items], noisy)
        peer = None
        for method, optimizer, omega in runs:
            val_err, test_err, mae, seconds = run(trainer, ds, items, ann, val, workers, method, optimizer, omega,
                                                  options, seed)
            peer = test_err if method == "mv" else peer
            rows.append((method, optimizer, omega, seed, val_err, test_err))
            print(f"{method:<11} {optimizer if method != 'mv' else '-':<9} {omega if method == 'conal' else '-':<9} "
                  f"{seed:>4} {val_err:>9.4f} {test_err:>10.4f} {test_err / peer:>6.2f} "
                  f"{'-' if mae is None else f'{mae:.3f}':>10} {seconds:>8.0f}", flush=True)
    for method in dict.fromkeys(m for m, *_ in runs if m != "mv"):
        mean = {(o, w): np.mean([r[4] for r in rows if r[:3] == (method, o, w)])
                for _, o, w in {(m, o, w) for m, o, w in runs if m == method}}
        (optimizer, omega), err = min(mean.items(), key=lambda kv: kv[1])
        print(f"choice for {method}: --{method}-optimizer {optimizer}"
              f"{f' --conal-omega {omega}' if method == 'conal' else ''} (mean validation error {err:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
