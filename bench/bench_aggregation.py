"""Aggregation speed and memory: first the paper's ImageNet setting in the grouped form (1.2M
labels, K = 1000 classes in groups of 10, m = 1000, at r = 1 and r = 9, each in its own process),
then ImageNet scale (1.2M labels, m = 1000) and CIFAR scale (50,000 labels, m = 100) with K = 10,
hammer-spammer gamma = 0.2, r = 1.

Prints seconds per Dawid-Skene iteration, seconds per MBEM step and peak memory; then the CLI
end to end on a 1.2M-label CSV (reading included) in a child process, and crowd-kit's
DawidSkene on the same CSV when crowd-kit happens to be installed (it is never a requirement).

    python bench/bench_aggregation.py [--labels 1200000] [--workers 1000]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import noise_sim
from mbemlib import aggregation

CROWDKIT = """
import sys
import pandas as pd
from crowdkit.aggregation import DawidSkene
df = pd.read_csv(sys.argv[1])
df = df.rename(columns={'item': 'task'})
labels = DawidSkene(n_iter=100).fit_predict(df)
labels.to_frame('label').to_csv(sys.argv[2])
"""


def simulate(n_labels, m, K, rng):
    truth = rng.integers(0, K, size=n_labels)
    confusions = noise_sim.hammer_spammer(m, K, 0.2, rng)
    items, workers, labels = noise_sim.simulate_labels(truth, confusions, 1, rng)
    return truth, aggregation.Annotations(items, workers, labels, n_labels, m, K)


def time_in_process(truth, ann, rng):
    start = time.perf_counter()
    result = aggregation.dawid_skene(ann, max_iter=20, tol=-np.inf)  # fixed 20 iterations
    per_iter = (time.perf_counter() - start) / result.iterations
    # A model that is right 70% of the time, as the bootstrap model roughly is on CIFAR-10.
    right = rng.random(ann.n) < 0.7
    predicted = np.where(right, truth, rng.integers(0, ann.K, size=ann.n))
    probs = aggregation.one_hot(predicted, ann.K)
    start = time.perf_counter()
    repeats = 20
    for _ in range(repeats):
        aggregation.mbem_step(ann, probs)
    return per_iter, (time.perf_counter() - start) / repeats


def run_child(cmd):
    """Wall seconds and peak RSS (MB) of one child process (os.wait4 gives that child's own rusage)."""
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"{cmd[:3]} failed with status {status}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def grouped_child(r, n_labels=1_200_000, K=1000, g=10, m=1000, seed=0):
    """The paper's ImageNet setting in the grouped form: 1.2M labels at redundancy r, K = 1000
    classes in groups of 10, m = 1000 workers with one 10 x 10 hammer-spammer matrix each. Prints
    JSON: seconds per EM iteration and per MBEM step (from a model right 70% of the time)."""
    rng = np.random.default_rng(seed)
    n = n_labels // r
    truth = rng.integers(0, K, n)
    confusions = noise_sim.simulate_workers(m, K, 0.2, rng, group_size=g)
    ann = aggregation.Annotations(*noise_sim.simulate_labels(truth, confusions, r, rng), n, m, K)
    start = time.perf_counter()
    grouped = aggregation.group_labels(ann, g)
    group_s = time.perf_counter() - start
    start = time.perf_counter()
    result = aggregation.dawid_skene(grouped.local, max_iter=10, tol=-np.inf)
    per_iter = (time.perf_counter() - start) / result.iterations
    predicted = np.where(rng.random(n) < 0.7, truth % g, rng.integers(0, g, n))  # within the item's group
    start = time.perf_counter()
    repeats = 5
    for _ in range(repeats):
        aggregation.mbem_step(grouped.local, aggregation.one_hot(predicted, g))
    print(json.dumps({"group_s": group_s, "em_s": per_iter, "mbem_step_s": (time.perf_counter() - start) / repeats}))


def accuracy(path, truth, label_column):
    with open(path) as f:
        header = f.readline().strip().split(",")
        rows = np.loadtxt(f, delimiter=",", usecols=(0, header.index(label_column)), dtype=np.int64)
    return float((truth[rows[:, 0]] == rows[:, 1]).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, default=1_200_000)
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grouped-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.grouped_child:
        return grouped_child(args.grouped_child, args.labels, m=args.workers, seed=args.seed)
    rng = np.random.default_rng(args.seed)

    for r in (1, 9):  # each case in its own process: its peak memory is its own
        child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--grouped-child", str(r), "--labels",
                                  str(args.labels), "--workers", str(args.workers)], stdout=subprocess.PIPE, text=True)
        out = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        if status:
            raise SystemExit(f"grouped r={r} failed (status {status})")
        timing = json.loads(out)
        print(f"grouped K=1000 g=10 m={args.workers} labels {args.labels} r={r}: grouping s {timing['group_s']:.3f}  "
              f"EM s/iter {timing['em_s']:.4f}")
        print(f"grouped K=1000 r={r}: mbem_step_s {timing['mbem_step_s']:.4f} peak_mb {usage.ru_maxrss / 1024:.0f}",
              flush=True)

    for name, n_labels, m in (("cifar", 50_000, 100), ("imagenet", args.labels, args.workers)):
        truth, ann = simulate(n_labels, m, 10, rng)
        per_iter, mbem = time_in_process(truth, ann, rng)
        print(f"{name}: labels {n_labels} workers {m} K 10  EM s/iter {per_iter:.4f}  "
              f"MBEM step s {mbem:.4f}  peak RSS MB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")

    with tempfile.TemporaryDirectory() as tmp:
        answers = os.path.join(tmp, "answers.csv")
        np.savetxt(answers, np.column_stack([ann.items, ann.workers, ann.labels]), fmt="%d",
                   delimiter=",", header="item,worker,label", comments="")
        ours_out = os.path.join(tmp, "ours.csv")
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "aggregation.py")
        ours_s, ours_mb = run_child([sys.executable, script, answers, "--method", "ds", "--out", ours_out])
        ours_acc = accuracy(ours_out, truth, "label")
        print(f"cli ds end to end: {ours_s:.2f} s  peak RSS MB {ours_mb:.0f}  accuracy {ours_acc:.4f}")
        try:
            import crowdkit  # noqa: F401
        except ImportError:
            print("crowd-kit not installed: no peer measured")
            return
        kit_out = os.path.join(tmp, "kit.csv")
        kit_s, kit_mb = run_child([sys.executable, "-c", CROWDKIT, answers, kit_out])
        kit_acc = accuracy(kit_out, truth, "label")
        print(f"crowd-kit DawidSkene: {kit_s:.2f} s  peak RSS MB {kit_mb:.0f}  accuracy {kit_acc:.4f}")
        print(f"time ratio ours/crowd-kit: {ours_s / kit_s:.3f}  memory ratio: {ours_mb / kit_mb:.3f}")


if __name__ == "__main__":
    main()
