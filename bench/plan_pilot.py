"""How big must a pilot be for plan.py's recommendation to hold? On real crowds (the shared dog and
face sets, CIFAR-10N's labels), pilots of a few sizes are drawn: that many items, each with
`--pilot-redundancy` of its labels drawn at random. For each pilot the planner runs with its
bootstrap (`--repeats` copies); reported per pilot size and method, over `--draws` pilots:
the r recommended most often, the share of pilots recommending it, the mean share of a pilot's
bootstrap copies that ranked its own recommendation first (the planner's own stability), and
the share of pilots that agree with the recommendation from every item (at the same redundancy).

    python bench/plan_pilot.py                             # the three sets, about 8 minutes on 2 cores
    python bench/plan_pilot.py --sets dog --sizes 50,100,200,400

A set is skipped with a line when its file is absent (a fresh clone has no ../shared).
"""

import argparse
import os
import sys
from collections import Counter

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from mbemlib import aggregation as agg
from mbemlib import planning
from mbemlib.annotations import draw_per_item
from mbemlib.label_files import read_answers

SETS = {  # name: (answers CSV relative to the checkout, the budget to plan)
    "dog": ("../shared/data/crowd/dog/answers.csv", 4000),
    "face": ("../shared/data/crowd/face/answers.csv", 3000),
    "cifar10n": ("data/cifar10n-jpeg.csv", 50000),  # made by cifar10n.py (reproduce.py's prepare step)
}


def pilot(ann, items, r, rng):
    """The labels of `items` (renumbered 0..), r of each item's labels drawn at random (all of them
    where it has fewer); workers keep their ids."""
    drawn = draw_per_item(ann.items, r, rng)
    new_id = np.full(ann.n, -1)
    new_id[items] = np.arange(len(items))
    keep = drawn[new_id[ann.items[drawn]] >= 0]
    return agg.Annotations(new_id[ann.items[keep]], ann.workers[keep], ann.labels[keep], len(items), ann.m, ann.K)


def recommend(ann, budget, redundancies, repeats, seed):
    """{method: (recommended r, share of bootstrap copies ranking it first)}."""
    pools = planning.pilot_pools(ann, repeats, seed)
    rows = planning.plan(pools, budget, redundancies, planning.DEFAULT_METHODS, seed=seed)
    return planning.summary(rows, planning.DEFAULT_METHODS)[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default=",".join(SETS))
    p.add_argument("--sizes", default="50,100,200,400,800")
    p.add_argument("--pilot-redundancy", type=int, default=2)
    p.add_argument("--redundancy", default="1,2,3,5")
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    os.chdir(ROOT)
    redundancies = [int(r) for r in args.redundancy.split(",")]
    print("| set | pilot items | method | most often recommended r | share of pilots | bootstrap stability | "
          "agrees with every item |")
    print("|---|---|---|---|---|---|---|")
    for name in args.sets.split(","):
        path, budget = SETS[name]
        if not os.path.exists(path):
            print(f"{name}: {path} is absent, skipped", file=sys.stderr)
            continue
        ann, *_ = read_answers(path)
        rng = np.random.default_rng(0)
        everything = recommend(pilot(ann, np.arange(ann.n), args.pilot_redundancy, rng), budget, redundancies,
                               args.repeats, 0)
        print(f"{name}: {ann.n} items, {ann.m} workers, K = {ann.K}, budget {budget}; every item at "
              f"r = {args.pilot_redundancy}: " + ", ".join(f"{m} {r}" for m, (r, _) in everything.items()),
              file=sys.stderr, flush=True)
        for size in [int(s) for s in args.sizes.split(",")] + [ann.n]:
            if size > ann.n:
                continue
            found = [recommend(pilot(ann, rng.choice(ann.n, size, replace=False), args.pilot_redundancy, rng),
                               budget, redundancies, args.repeats, draw) for draw in range(args.draws)]
            for method in planning.DEFAULT_METHODS:
                picks = Counter(f[method][0] for f in found)
                top, count = picks.most_common(1)[0]
                stability = np.mean([f[method][1] for f in found])
                agree = np.mean([f[method][0] == everything[method][0] for f in found])
                print(f"| {name} | {size} | {method} | {top} | {count / len(found):.0%} | {stability:.0%} | "
                      f"{agree:.0%} |", flush=True)


if __name__ == "__main__":
    main()
