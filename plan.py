"""How many labels per item should a fixed labelling budget buy?  `python plan.py --help`

Reads pilot labels or simulates a crowd, runs the planner (mbemlib/planning.py, whose docstring
states the model and its assumptions; docs/planning.md), and prints, per redundancy r and method,
the items, their targets' accuracy, their worth in clean items and the predicted test error, then
the r each method should buy.
"""

import argparse
import sys

import numpy as np

from mbemlib import aggregation as agg
from mbemlib.cli import InputError, Parser, csv_list, number, output_problem
from mbemlib.planning import (
    DEFAULT_BETA,
    DEFAULT_CURVE,
    DEFAULT_METHODS,
    METHODS,
    Classifier,
    frame,
    pilot_pools,
    plan,
    simulated_pools,
    summary,
)


def recommended_line(best):
    return "recommended r: " + ", ".join(f"{method} {r}" for method, (r, _) in best.items())


def near_chance(table, chance, margin=0.01):
    """The methods whose predicted error is within `margin` of chance at every r: their ranking
    rests on differences the classifier would not show."""
    return [method for method, by_r in table.items() if all(v[3][0] >= chance - margin for v in by_r.values())]


def print_table(table, best, chance):
    print(f"{'method':<7} {'r':>2} {'items':>7} {'target acc':>14} {'clean-equivalent':>19} {'predicted error':>17}")
    for method, by_r in table.items():
        for r, (n, acc, eff, err) in by_r.items():
            mark = " <" if r == best[method][0] else ""
            print(f"{method:<7} {r:>2} {n:>7} {acc[0]:>7.3f} ± {acc[1]:.3f} {eff[0]:>10.0f} ± {eff[1]:>6.0f} "
                  f"{err[0]:>8.3f} ± {err[1]:.3f}{mark}")
    print("(< the r with the least predicted error; share of repeats that ranked it first: " +
          ", ".join(f"{method} {share:.0%}" for method, (_, share) in best.items()) + ")")
    if flat := near_chance(table, chance):
        print(f"warning: {', '.join(flat)}: predicted near chance ({chance:.2f}) at every r: the ranking rests on "
              "differences too small to train on; a larger budget, better workers, or your classifier's own "
              "--learning-curve may change that")
    print(recommended_line(best))


def plot(table, best, path, title):
    from mbemlib.report import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for offset, (method, by_r) in enumerate(table.items()):
        rs = np.array(list(by_r)) + 0.06 * (offset - (len(table) - 1) / 2)  # equal points at r = 1 stay visible
        err = np.array([v[3] for v in by_r.values()])
        ax.errorbar(rs, err[:, 0], yerr=err[:, 1], marker="o", capsize=3,
                    label=f"{agg.METHODS.get(method, method)} (best r = {best[method][0]})")
    ax.set_xlabel("labels per item r (items = budget / r)")
    ax.set_ylabel("predicted test error")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curve_points(text):
    """--learning-curve: items:error pairs, e.g. 50000:0.18,16666:0.25."""
    try:
        points = [(int(n), float(e)) for n, e in (p.split(":") for p in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected items:error pairs such as 50000:0.18,16666:0.25, "
                                         f"not {text!r}") from None
    if any(n < 1 or not 0 < e < 1 for n, e in points):
        raise argparse.ArgumentTypeError(f"items must be at least 1 and errors in (0, 1): {text!r}")
    return points


def noisy_run(text):
    """--noisy-run: items:accuracy:error[:agreement], e.g. 1297:0.5:0.31:0.9."""
    try:
        n, *shares = text.split(":")
        n, shares = int(n), [float(v) for v in shares]
    except ValueError:
        n, shares = 0, []
    if len(shares) not in (2, 3):
        raise argparse.ArgumentTypeError(f"expected items:accuracy:error[:agreement] such as 1297:0.5:0.31, "
                                         f"not {text!r}")
    if n < 1 or not all(0 < v < 1 for v in shares[:2]) or not all(0 <= v <= 1 for v in shares[2:]):
        raise argparse.ArgumentTypeError(f"items must be at least 1, accuracy and error in (0, 1), agreement in "
                                         f"[0, 1]: {text!r}")
    return n, *shares


def parser():
    from mbemlib.settings import SETTINGS

    setting = {s.name: s for s in SETTINGS}
    p = Parser(prog="plan.py", description="How many labels per item should a fixed labelling budget buy? Each "
               "redundancy r is ranked by what its training targets are worth in clean items (the model: "
               "docs/planning.md).")
    p.add_argument("labels", nargs="?", help="pilot labels: a CSV of item, worker, label (as aggregation.py reads), "
                   "some items labelled twice or more; without it, a simulated crowd")
    for name in ("worker_model", "gamma", "workers"):
        s = setting[name]
        p.add_argument(s.flag, type=s.type, choices=s.choices, default=s.default,
                       help=f"{s.help}, for a simulated crowd (default {s.default})")
    s = setting["mbem_step"]
    p.add_argument(s.flag, choices=s.choices, default=s.default, help=f"{s.help}, for mbem's targets (default "
                   f"{s.default}, as MBEM.py)")
    p.add_argument("--classes", type=number(int, 2), default=10, help="classes K of a simulated crowd (default 10)")
    p.add_argument("--budget", type=number(int, 1), default=50000, help="total labels to buy (default 50000)")
    defaults = {"redundancy": "1,2,3,5,7,9", "algorithms": ",".join(DEFAULT_METHODS),
                "learning_curve": ",".join(f"{n}:{e}" for n, e in DEFAULT_CURVE)}
    p.add_argument("--redundancy", type=csv_list(int, 1), default=defaults["redundancy"],
                   help=f"labels per item to compare (default {defaults['redundancy']})")
    p.add_argument("--algorithms", type=csv_list(str), default=defaults["algorithms"],
                   help=f"comma-separated, from {','.join(METHODS)}; oracle: the pool's confusions known "
                   f"(default {defaults['algorithms']})")
    p.add_argument("--learning-curve", type=curve_points, default=defaults["learning_curve"],
                   help="your classifier's test error after training on clean labels, items:error[,...]; one "
                   f"point keeps the slope {DEFAULT_BETA} (default {defaults['learning_curve']}: the cpu "
                   "preset's ResNet-20 on CIFAR-10)")
    p.add_argument("--noisy-run", type=noisy_run,
                   help="one training of your classifier on noisy labels, items:accuracy:error[:agreement] (hard "
                   "labels right with that probability, errors uniform; the test error it reached; the share of its "
                   "training items it predicts as labelled): how much fitting wrong labels costs it and how much it "
                   "memorises (default: neither, as the cpu preset's ResNet-20)")
    p.add_argument("--repeats", type=number(int, 2), default=5,
                   help="bootstrap copies of the pilot, or simulated pools, behind each spread (default 5)")
    p.add_argument("--prior-labels", type=number(float, 0), default=1.0,
                   help="pseudo-labels per confusion row, drawn towards the crowd's pooled row, for a pilot "
                   "(default 1)")
    p.add_argument("--seed", type=number(int, 0), default=0, help="seeds every draw (default 0)")
    p.add_argument("--out", help="also write the table to this CSV")
    p.add_argument("--plot", help="draw the predicted errors to this PNG")
    return p


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    methods = [agg.canonical(m) for m in args.algorithms]
    if unknown := [m for m in methods if m not in METHODS]:
        p.error(f"--algorithms: {unknown[0]!r} is not one of {', '.join(METHODS)}")
    for path in (args.out, args.plot):
        if path and (problem := output_problem(path)):
            p.error(problem)
    try:
        if args.labels:
            from mbemlib.label_files import read_answers

            ann, *_, classes = read_answers(args.labels)
            repeated = int((np.bincount(ann.items, minlength=ann.n) > 1).sum())
            if repeated < 2 * ann.K:
                print(f"warning: only {repeated} pilot items have two labels or more; the worker estimates rest on "
                      "those items", file=sys.stderr)
            pools = pilot_pools(ann, args.repeats, args.seed, args.prior_labels)
            title = f"{args.labels}: {ann.m} workers, {ann.n} pilot items, K = {ann.K}"
        else:
            pools = simulated_pools(args.repeats, args.workers, args.classes, args.gamma, args.worker_model, args.seed)
            title = f"{args.workers} {args.worker_model} workers, gamma {args.gamma}, K = {args.classes}"
        title += f"; budget {args.budget}"
        print(title)
        classifier = Classifier.of(args.learning_curve, pools[0].K, args.noisy_run)
        print(f"classifier: clean test error {classifier.c:.3g} n^-{classifier.beta:.3f}, "
              f"copying lambda {classifier.copying:.3g}, repeating mu {classifier.repeating:.3g}")
        rows = plan(pools, args.budget, sorted(set(args.redundancy)), methods, classifier, args.seed, args.mbem_step)
    except InputError as err:
        print(f"plan.py: error: {err}", file=sys.stderr)
        return 2
    table, best = summary(rows, methods)
    print_table(table, best, classifier.chance)
    if args.out:
        from mbemlib.atomic import atomic_write

        atomic_write(args.out, frame(table).to_csv(index=False).encode())
    if args.plot:
        plot(table, best, args.plot, title)
    for path in (args.out, args.plot):
        if path:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
