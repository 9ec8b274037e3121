"""The budget planner (plan.py) against what the project measured: for each results folder, the r
each method's trainings did best at, the r the planner recommends for the same crowd and budget,
and the rank correlation of the two orderings of the redundancies. The planner never sees a
folder's test errors: a simulated folder gives it the very workers its runs drew (each seed's
pool, MBEM.py's draw), a folder of real labels gives it those labels as the pilot.

    python bench/plan_check.py results/cpu results/cpu-oracle results/cpu-mxnet results/cifar10n
    python bench/plan_check.py results/cpu --learning-curve 50000:0.1755,16666:0.2550

The learning curve is plan.py's default (the cpu preset's ResNet-20 on clean CIFAR-10) unless one
is given; a markdown table goes to stdout.
"""

import argparse
import json
import os
import sys

import numpy as np
from scipy.stats import spearmanr

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
import plan
from mbemlib import planning, report
from mbemlib.label_files import read_answers


def measured(cells):
    """{method: {r: mean test error over the seeds}} of the planner's methods (report.summarise)."""
    return {m: {r: float(np.mean(v)) for r, v in sorted(by_r.items())}
            for m, by_r in report.summarise(cells).items() if m in planning.METHODS}


def pools_of(config, seeds, repeats, seed):
    if config.get("annotations"):
        path = os.path.join(ROOT, config["annotations"])
        if not os.path.exists(path):
            raise SystemExit(f"{path} is missing: `python reproduce.py --list` names the step that makes it")
        ann, *_ = read_answers(path)
        return planning.pilot_pools(ann, repeats, seed), f"its {ann.n} items' real labels as the pilot"
    pools = [planning.simulated_pool(config["workers"], 10, config["gamma"], config["worker_model"],
                                 np.random.default_rng(s)) for s in seeds]
    return pools, f"the workers of its seed{'s' * (len(seeds) > 1)} {','.join(map(str, seeds))}"


def check(folder, curve_points, repeats, seed):
    with open(os.path.join(folder, "results.json")) as f:
        saved = json.load(f)
    config, errors = saved["config"], measured(saved["cells"])
    pools, source = pools_of(config, sorted({c['seed'] for c in saved['cells']}), repeats, seed)
    redundancies = sorted({r for by_r in errors.values() for r in by_r})
    curve = planning.Classifier.fit(curve_points, pools[0].K)
    rows = planning.plan(pools, config["budget"], redundancies, list(errors), curve, seed,
                         config.get("mbem_step", "release"))  # the step the folder's MBEM cells used
    table, best = planning.summary(rows, list(errors))
    lines = []
    for method, by_r in errors.items():
        rs = list(by_r)
        predicted = [table[method][r][3][0] for r in rs]
        worth = [table[method][r][2][0] for r in rs]
        measured_best = rs[int(np.argmin(list(by_r.values())))]
        rho = f"{spearmanr(list(by_r.values()), [-w for w in worth])[0]:+.2f}" if len(rs) > 2 else ""
        lines.append(f"| {folder} | {method} | " + " / ".join(f"{e:.3f}" for e in by_r.values()) + " | " +
                     " / ".join(f"{e:.3f}" for e in predicted) + f" | {measured_best} | {best[method][0]} "
                     f"({best[method][1]:.0%}) | {rho} |")
    return source, lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+")
    p.add_argument("--learning-curve", type=plan.curve_points, default=list(planning.DEFAULT_CURVE))
    p.add_argument("--repeats", type=int, default=5, help="pilot bootstraps for a folder of real labels")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    os.chdir(ROOT)
    print("| folder | method | measured error at each r | predicted error | measured best r | planned best r "
          "(share of repeats) | rank correlation |")
    print("|---|---|---|---|---|---|---|")
    sources = []
    for folder in args.folders:
        source, lines = check(folder.rstrip("/"), args.learning_curve, args.repeats, args.seed)
        print("\n".join(lines))
        sources.append(f"{folder}: {source}")
    print("\nrank correlation: Spearman's, of the measured errors against the negated clean-equivalents over r "
          "(three r or more); the pools: " + "; ".join(sources))


if __name__ == "__main__":
    main()
