"""How many labels per item should a fixed labelling budget buy: the planner's model, behind
`python plan.py` (the command) and `api.plan`.

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
   of Algorithm 1, as the release's `--rounds 1`, with the M-step `mbem_step` as MBEM.py's
   --mbem-step, the release's by default, from the predictions on its training items of a
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

from dataclasses import dataclass

import numpy as np

import noise_sim
from mbemlib import aggregation as agg
from mbemlib.cli import InputError

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


def targets(method, ann, pool, truth, rng, rho=None, repeating=0.0, mbem_step="release"):
    """Training targets (n x K) of one method on a collection, as MBEM.py makes them (point 2);
    mbem's M-step is `mbem_step`, one of aggregation.MBEM_STEPS, as MBEM.py's --mbem-step."""
    if method in agg.LABEL_ONLY:
        return agg.aggregate(ann, method, rng).posterior
    if method == "oracle":  # zeros lifted to 1e-10 as the release smooths, as MBEM.py's oracle has it
        return agg.posterior(ann, agg.normalise_confusions(pool.confusions), pool.prior)
    if method == "mbem":
        repeated = rng.random(ann.n) < repeating
        predicted = np.where(repeated, agg.majority_vote(ann, rng), model_predictions(truth, rho, ann.K, rng))
        return agg.MBEM_STEPS[mbem_step](ann, agg.one_hot(predicted, ann.K))[0]
    raise ValueError(f"{method!r}: the planner knows {', '.join(METHODS)}")


def one_repeat(pool, budget, redundancies, methods, classifier, rng, mbem_step="release"):
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
            found[method] = worth(targets(method, ann, pool, truth, rng, rho, classifier.repeating, mbem_step), truth)
        for method in methods:
            accuracy, efficiency = found[method]
            score = float(classifier.predicted_error(n, efficiency, accuracy, cap=False))
            rows.append((r, n, method, accuracy, float(classifier.items(score)), min(score, classifier.chance), score))
    return rows


def plan(pools, budget, redundancies, methods=DEFAULT_METHODS, classifier=None, seed=0, mbem_step="release"):
    """Every repeat's rows: one per pool (a bootstrap fit or a simulated draw), see `one_repeat`;
    mbem with the M-step `mbem_step` (aggregation.MBEM_STEPS)."""
    classifier = classifier or Classifier.fit(DEFAULT_CURVE, pools[0].K)
    too_many = [r for r in redundancies if r > len(pools[0].confusions)]
    if too_many:
        raise InputError(f"redundancy {too_many[0]} needs that many distinct workers; the pool has "
                         f"{len(pools[0].confusions)}")
    rows = []
    for repeat, pool in enumerate(pools):
        rng = np.random.default_rng([seed, repeat])
        rows += [(repeat, *row) for row in one_repeat(pool, budget, redundancies, methods, classifier, rng,
                                                      mbem_step)]
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
