"""How many labels per item should a fixed labelling budget buy?  `python plan.py --help`

In: a pool of workers, estimated from pilot labels (a CSV of item, worker, label, as aggregation.py
reads it, some items labelled more than once) or simulated as MBEM.py simulates it (--worker-model,
--gamma, --workers); a budget of labels; the redundancies r to compare. Out: for each r and method,
n = budget // r items, how good their training targets are, what they are worth in clean items,
the test error that predicts, and the r each method should buy.

The model and its assumptions:
1. The crowd. Every item's true class is drawn from the pool's class prior, its r workers uniformly
   without replacement from the pool's m workers (as MBEM.py's sweep draws them), and each label
   from the worker's confusion row of the true class, independently given the class. So every
   worker gives budget / m labels at every r. A pilot's pool is Dawid-Skene's fit to the pilot,
   each confusion row shrunk towards the crowd's pooled row by `prior_labels` pseudo-labels (a
   worker seen on five items is not taken for a perfect one) and its prior the fit's class prior.
2. The targets, by Monte Carlo: a whole collection of n items at r is drawn and aggregated exactly
   as MBEM.py aggregates it: mv (one-hot, ties at random), wmv (label shares), em (Dawid-Skene's
   posterior), oracle (the posterior under the pool's own confusions: the ceiling), mbem (one step
   of Algorithm 1, as the release's `--rounds 1`, from the predictions on its training items of a
   model trained on wmv's targets: on a share mu of them it repeats the label it was trained on
   (the most frequent, ties at random: what it memorised), on the others it is right with
   probability rho and otherwise wrong uniformly, as on unseen images).
3. What the targets teach, by two limiting learners, the user's classifier a mixture of them.
   A learner that averages (a network that does not memorise its labels, or any learner whose
   features' noise dominates): near a uniform prediction u an item's cross-entropy gradient is
   (t - u) x for a target t; its component along e_y - u (y the true class) is the signal,
   s = (K t_y - 1) / (K - 1) clean labels' worth, and its power |t - u|^2 / |e_y - u|^2 scales
   the noise the item's features add. So n items are worth n_eff = n E[s]^2 / E[power] clean
   ones, and its test error is err(n_eff). Hard labels right with probability a (errors uniform)
   are worth n s^2 with s = (K a - 1) / (K - 1); a uniform target (a spammer's item under the
   right confusions) adds nothing and costs nothing; a right one-hot target is one clean item.
   A learner that copies (a network that fits every training label and answers an unseen image
   with the target of the training images nearest it): its test answer is the argmax of a
   neighbour's target, right with the targets' accuracy a, so its accuracy above chance is that of
   the clean learner on the same n items times s_a = (K a - 1) / (K - 1):
   1/K + s_a (1 - err(n) - 1/K). The classifier's accuracy is (1 - lambda) times the first's plus
   lambda times the second's. The recommendation ranks r by that predicted error (below chance,
   the averaging learner's err(n_eff) is not capped, so the ranking goes on by n_eff), and the
   clean-equivalent shown is the clean items n whose err(n) is the predicted error.
4. The classifier: a learning curve err(n) = c n^-beta (at most the chance error 1 - 1/K) of its
   test error on clean labels, fitted in log-log to the points given (one point keeps
   beta = DEFAULT_BETA); lambda; and mu, the share of its training items whose label it repeats
   (memorised) rather than predicts. mbem's rho is 1 - the predicted error of training on wmv's
   targets. lambda and mu are 0 unless one run on noisy labels is given (n items, hard labels
   right with probability a, errors uniform, its test error e, and optionally the share A of its
   training items predicted as labelled): lambda solves the mixture's accuracy = 1 - e, and mu
   solves A = mu + (1 - mu) g, where g = (1 - e) a + e (1 - a) / (K - 1) is how often a model
   that only predicts repeats a label. The cpu preset's ResNet-20 on CIFAR-10 averages: its MV at
   r = 1 (labels right 0.291, test error 0.487, the means of results/cpu's three seeds) is
   predicted at 0.511 by the averaging learner alone (bench/plan_check.py).

Uncertainty: `--repeats` times the pilot's items are resampled with replacement and the pool fitted
again (a simulated pool is drawn again from the next seed); each repeat draws its own collection. The
table gives each figure's mean and standard deviation over repeats, and the last line the r each
method ranks first on the mean, with the share of repeats that ranked it first.
"""

import argparse
import sys
from dataclasses import dataclass

import numpy as np

import aggregation as agg
import noise_sim
from cli import InputError, Parser, csv_list, number, output_problem

METHODS = ("mv", "wmv", "em", "mbem", "oracle")
DEFAULT_METHODS = ("mv", "wmv", "em", "mbem")
# The cpu preset's ResNet-20 on CIFAR-10 trained on clean labels (results/cifar10n, the `clean`
# cells, mean of 3 seeds): the curve a plan uses unless --learning-curve gives the user's own.
DEFAULT_CURVE = ((50000, 0.1755), (16666, 0.2550))
DEFAULT_BETA = 0.34  # the default curve's slope, log(0.2550 / 0.1755) / log(50000 / 16666)


@dataclass
class Pool:
    """m workers' confusions (m x K x K) and the class prior (K,) of the items they label."""

    confusions: np.ndarray
    prior: np.ndarray

    @property
    def K(self):  # noqa: N802 (the paper's K)
        return self.confusions.shape[1]


def simulated_pool(workers, K, gamma, model, rng):
    """MBEM.py's simulated crowd (noise_sim.simulate_workers), classes balanced."""
    return Pool(noise_sim.simulate_workers(workers, K, gamma, rng, model), np.full(K, 1.0 / K))


def pilot_pool(ann, prior_labels=1.0):
    """The pool behind pilot labels: Dawid-Skene's confusions, each row's counts plus `prior_labels`
    pseudo-labels spread as the crowd's pooled row (the counts of all workers together)."""
    fit = agg.dawid_skene(ann)
    counts = agg.confusion_counts(ann, fit.posterior)
    pooled = counts.sum(axis=0)
    pooled /= np.maximum(pooled.sum(axis=1, keepdims=True), 1e-12)
    return Pool(agg.normalise_confusions(counts + prior_labels * pooled[None]), fit.prior)


@dataclass
class Classifier:
    """How the user's classifier learns (the module's points 3 and 4): err(n) = c n^-beta, at most
    `chance`, its test error after training on n clean items; `copying`, lambda, its weight on the
    learner that copies its nearest training target; `repeating`, mu, the share of its training
    items whose label it repeats."""

    c: float
    beta: float
    chance: float
    copying: float = 0.0
    repeating: float = 0.0

    @classmethod
    def fit(cls, points, K, beta=DEFAULT_BETA):
        """Least squares in log-log through (items, error) points; one point keeps `beta`."""
        n, err = (np.log(np.asarray(v, dtype=np.float64)) for v in zip(*points, strict=True))
        if len(set(n.tolist())) > 1:
            beta = -np.polyfit(n, err, 1)[0]
        return cls(float(np.exp(np.mean(err + beta * n))), float(beta), 1.0 - 1.0 / K)

    @classmethod
    def of(cls, points, K, noisy_run=None):
        """The classifier a plan is told of: its clean learning curve, and one noisy run
        (items, accuracy, error[, agreement]) if given."""
        classifier = cls.fit(points, K)
        if noisy_run is None:
            return classifier
        n, accuracy, error, *agreement = noisy_run
        return classifier.with_noisy_run(n, accuracy, error, K, *agreement)

    def error(self, n, cap=True):
        n = np.maximum(np.asarray(n, dtype=np.float64), 1e-12)
        error = self.c * n ** -self.beta
        return np.minimum(error, self.chance) if cap else error

    def items(self, error):
        """The clean items n with err(n) = error."""
        return (self.c / np.asarray(error, dtype=np.float64)) ** (1.0 / self.beta)

    def predicted_error(self, n, efficiency, accuracy, cap=True):
        """Test error after training on n items whose targets are worth `efficiency` clean items
        each to the averaging learner and whose argmax is right on a share `accuracy`."""
        K = 1.0 / (1.0 - self.chance)
        averaging = 1.0 - self.error(n * efficiency, cap)
        copying = 1.0 / K + (K * accuracy - 1) / (K - 1) * (1.0 - self.error(n) - 1.0 / K)
        error = 1.0 - ((1 - self.copying) * averaging + self.copying * copying)
        return np.minimum(error, self.chance) if cap else error

    def with_noisy_run(self, n, accuracy, error, K, agreement=None):
        """This classifier with lambda (and mu, given `agreement`) solved from one run on n hard
        labels right with probability `accuracy` (errors uniform) that reached test `error` and
        repeated its label on a share `agreement` of its training items; both within [0, 1]."""
        s = (K * accuracy - 1) / (K - 1)
        if not 0 < s < 1 or error >= self.chance:
            raise InputError(f"a noisy run needs labels better than chance and short of perfect, and a test error "
                             f"below chance ({self.chance:.2f}): got accuracy {accuracy}, error {error}")
        averaging = 1.0 - float(self.error(n * s * s))
        copying = 1.0 / K + s * (1.0 - float(self.error(n)) - 1.0 / K)
        weight = (averaging - (1 - error)) / (averaging - copying) if averaging != copying else 0.0
        mu = 0.0
        if agreement is not None:
            chance_repeat = (1 - error) * accuracy + error * (1 - accuracy) / (K - 1)
            mu = float(np.clip((agreement - chance_repeat) / (1 - chance_repeat), 0.0, 1.0))
        return Classifier(self.c, self.beta, self.chance, float(np.clip(weight, 0.0, 1.0)), mu)


def worth(targets, truth):
    """(accuracy of the targets' argmax, their worth per item in clean items to the averaging
    learner, E[s]^2 / E[power]), s = (K t_y - 1) / (K - 1), power = |t - u|^2 / |e_y - u|^2."""
    K = targets.shape[1]
    s = ((K * targets[np.arange(len(truth)), truth] - 1) / (K - 1)).mean()
    power = (((targets - 1.0 / K) ** 2).sum(axis=1) / (1 - 1.0 / K)).mean()
    return float((targets.argmax(axis=1) == truth).mean()), float(s ** 2 / power) if power > 0 else 0.0


def model_predictions(truth, rho, K, rng):
    """A model right on a share rho of the items, otherwise one of the other K - 1 classes at random."""
    wrong = (truth + rng.integers(1, K, size=len(truth))) % K
    return np.where(rng.random(len(truth)) < rho, truth, wrong)


def collection(pool, n, r, rng):
    """(Annotations, truth): n items of the pool's prior, r distinct workers each (point 1)."""
    truth = rng.choice(pool.K, size=n, p=pool.prior)
    m = len(pool.confusions)
    return agg.Annotations(*noise_sim.simulate_labels(truth, pool.confusions, r, rng), n, m, pool.K), truth


def targets(method, ann, pool, truth, rng, rho=None, repeating=0.0):
    """Training targets (n x K) of one method on a collection, as MBEM.py makes them (point 2)."""
    if method in agg.LABEL_ONLY:
        return agg.aggregate(ann, method, rng).posterior
    if method == "oracle":  # zeros lifted to 1e-10 as the release smooths, as MBEM.py's oracle has it
        return agg.posterior(ann, agg.normalise_confusions(pool.confusions), pool.prior)
    if method == "mbem":
        repeated = rng.random(ann.n) < repeating
        predicted = np.where(repeated, agg.majority_vote(ann, rng), model_predictions(truth, rho, ann.K, rng))
        return agg.mbem_step(ann, agg.one_hot(predicted, ann.K))[0]
    raise ValueError(f"{method!r}: the planner knows {', '.join(METHODS)}")


def one_repeat(pool, budget, redundancies, methods, classifier, rng):
    """Rows (r, n, method, target accuracy, clean-equivalent, predicted error, uncapped predicted
    error: the ranking's score) of one draw at every r."""
    rows = []
    for r in redundancies:
        n = budget // r
        ann, truth = collection(pool, n, r, rng)
        found = {}
        for method in sorted(methods, key=lambda m: m == "mbem"):  # mbem's model needs wmv's targets
            rho = None
            if method == "mbem":
                accuracy, efficiency = found.get("wmv") or worth(targets("wmv", ann, pool, truth, rng), truth)
                rho = 1.0 - float(classifier.predicted_error(n, efficiency, accuracy))
            found[method] = worth(targets(method, ann, pool, truth, rng, rho, classifier.repeating), truth)
        for method in methods:
            accuracy, efficiency = found[method]
            score = float(classifier.predicted_error(n, efficiency, accuracy, cap=False))
            rows.append((r, n, method, accuracy, float(classifier.items(score)), min(score, classifier.chance), score))
    return rows


def plan(pools, budget, redundancies, methods=DEFAULT_METHODS, classifier=None, seed=0):
    """Every repeat's rows: one per pool (a bootstrap fit or a simulated draw), see `one_repeat`."""
    classifier = classifier or Classifier.fit(DEFAULT_CURVE, pools[0].K)
    too_many = [r for r in redundancies if r > len(pools[0].confusions)]
    if too_many:
        raise InputError(f"redundancy {too_many[0]} needs that many distinct workers; the pool has "
                         f"{len(pools[0].confusions)}")
    rows = []
    for repeat, pool in enumerate(pools):
        rng = np.random.default_rng([seed, repeat])
        rows += [(repeat, *row) for row in one_repeat(pool, budget, redundancies, methods, classifier, rng)]
    return rows


def summary(rows, methods):
    """{method: {r: (n, (mean, sd) of target accuracy, of clean-equivalent, of predicted error)}}
    and {method: (recommended r: the least mean uncapped predicted error, the share of repeats
    that ranked it first)}."""
    repeats = sorted({row[0] for row in rows})
    table, best = {}, {}
    for method in methods:
        mine = [row for row in rows if row[3] == method]
        rs = sorted({row[1] for row in mine})
        grid = np.array([[next(row[4:] for row in mine if row[0] == k and row[1] == r) for r in rs] for k in repeats])
        mean, sd = grid.mean(axis=0), grid.std(axis=0, ddof=1) if len(repeats) > 1 else np.zeros(grid.shape[1:])
        n = {row[1]: row[2] for row in mine}
        table[method] = {r: (n[r], *[(mean[j, q], sd[j, q]) for q in range(3)]) for j, r in enumerate(rs)}
        first = int(np.argmin(mean[:, 3]))
        best[method] = (rs[first], float((grid[:, :, 3].argmin(axis=1) == first).mean()))
    return table, best


def resample_items(ann, rng):
    """A bootstrap copy of pilot labels: n items drawn with replacement, each with all its labels."""
    order = np.argsort(ann.items, kind="stable")
    counts = np.bincount(ann.items, minlength=ann.n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    chosen = rng.integers(0, ann.n, size=ann.n)
    lengths = counts[chosen]
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    rows = order[np.repeat(starts[chosen], lengths) + offsets]
    return agg.Annotations(np.repeat(np.arange(ann.n), lengths), ann.workers[rows], ann.labels[rows], ann.n, ann.m,
                           ann.K)


def pilot_pools(ann, repeats, seed=0, prior_labels=1.0):
    """The pilot's own pool first, then repeats - 1 pools fitted to bootstrap copies of its items."""
    rng = np.random.default_rng([seed, 1])
    return [pilot_pool(ann if k == 0 else resample_items(ann, rng), prior_labels) for k in range(repeats)]


def simulated_pools(repeats, workers, K, gamma, model, seed=0):
    """One pool per repeat, the k-th as MBEM.py draws seed `seed + k`'s workers."""
    return [simulated_pool(workers, K, gamma, model, np.random.default_rng(seed + k)) for k in range(repeats)]


def frame(table):
    """The summary as a pandas DataFrame: a row per (method, r)."""
    import pandas as pd

    records = [dict(method=method, redundancy=r, items=n, target_accuracy=acc[0], target_accuracy_sd=acc[1],
                    clean_equivalent=eff[0], clean_equivalent_sd=eff[1], predicted_error=err[0],
                    predicted_error_sd=err[1])
               for method, by_r in table.items() for r, (n, acc, eff, err) in by_r.items()]
    return pd.DataFrame.from_records(records)


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
    from report import pyplot

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
    from settings import SETTINGS

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
            from label_files import read_answers

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
        rows = plan(pools, args.budget, sorted(set(args.redundancy)), methods, classifier, args.seed)
    except InputError as err:
        print(f"plan.py: error: {err}", file=sys.stderr)
        return 2
    table, best = summary(rows, methods)
    print_table(table, best, classifier.chance)
    if args.out:
        from atomic import atomic_write

        atomic_write(args.out, frame(table).to_csv(index=False).encode())
    if args.plot:
        plot(table, best, args.plot, title)
    for path in (args.out, args.plot):
        if path:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
