"""Crowd-label aggregation: majority vote, weighted majority vote, Dawid-Skene EM, the MBEM step.

Labels are sparse triples (item i, worker a, label l). Everything below works on the sparse
incidence matrix A (n x mK), A[i, a*K + l] = 1 when worker a gave item i the label l, so
memory is O(labels + m K^2 + n K) and no Python loop runs over items or labels:

    label counts     N[i, l]     = sum_a A[i, a*K + l]
    confusion counts C[a, k, l]  = sum_i A[i, a*K + l] T[i, k]          (A^T T)
    log posterior    log P[i, k] = log q[k] + sum_{a,l} A[i, a*K + l] log pi_a[k, l]   (A log pi)

where T (n x K) is any distribution over each item's true class (hard or soft).

Every method has one name, used by every command line, results file and report (METHODS).
`python aggregation.py` (the command, mbemlib/label_files.py) aggregates a CSV of real labels.
"""

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from mbemlib.cli import InputError


@dataclass(frozen=True)
class Method:
    """One method, as every command line, results file and report names it."""

    title: str  # what a table or figure calls it
    seed: int  # its own random stream (MV's tie-breaks), fixed here so that reordering a table changes no result
    needs: str  # what makes its targets: labels, model, true confusions, true labels, or, from the optional
    # libraries (crowd_methods.py), library (a consensus) or crowd head (trained end to end on every label)
    min_redundancy: int = 1  # the fewest labels per item it runs with


# Every method: the seeds are the values every committed results folder was drawn with.
REGISTRY = {
    "mv": Method("majority vote", 0, "labels"),
    "wmv": Method("weighted MV", 1, "labels"),
    "em": Method("label-only EM", 2, "labels"),
    "mbem": Method("MBEM", 3, "model"),  # bootstrapped from WMV's model: the paper's Algorithm 1
    "oracle": Method("oracle confusions", 4, "true confusions"),
    "clean": Method("clean labels", 5, "true labels"),
    "crowdlab": Method("CROWDLAB", 6, "library", min_redundancy=2),  # cleanlab refuses items with one label
    "crowdlayer": Method("Crowd Layer", 7, "crowd head"),
    "conal": Method("CoNAL", 8, "crowd head"),
}
METHODS = {name: method.title for name, method in REGISTRY.items()}  # name: what a report calls it
LABEL_ONLY = tuple(name for name, method in REGISTRY.items() if method.needs == "labels")  # `aggregate`'s
END_TO_END = tuple(name for name, method in REGISTRY.items() if method.needs == "crowd head")  # the torch trainer's
FIELD = tuple(name for name, method in REGISTRY.items() if method.needs == "library") + END_TO_END  # optional libraries
ALIASES = {"ds": "em"}  # Dawid-Skene, as crowd-kit names label-only EM


def runs_at(method, r):
    """Whether `method` can run on items with r labels each (its min_redundancy); r = 0, real labels
    taken as they are (no fixed redundancy), is left to the method to judge."""
    return r == 0 or r >= REGISTRY[method].min_redundancy


def canonical(name):
    """A method's one name: `ds` is `em`; other names pass unchanged (and are checked by the caller)."""
    return ALIASES.get(name.strip().lower(), name.strip().lower())


# Dawid-Skene's stopping rule, for every caller: at most MAX_ITER rounds, stop when the mean
# per-item log-likelihood gains less than TOL.
MAX_ITER, TOL = 100, 1e-7
RELEASE_ZERO = 1e-10  # the release replaces zero confusion entries by this before renormalising


@dataclass
class Annotations:
    """n items, m workers, K classes; one entry per label in the three int arrays."""

    items: np.ndarray
    workers: np.ndarray
    labels: np.ndarray
    n: int
    m: int
    K: int
    _incidence: sp.csr_matrix = field(default=None, repr=False)

    @classmethod
    def from_arrays(cls, items, workers, labels, n=None, m=None, K=None):
        items, workers, labels = (np.asarray(a, dtype=np.int64) for a in (items, workers, labels))
        n = int(items.max()) + 1 if n is None else n
        m = int(workers.max()) + 1 if m is None else m
        K = int(labels.max()) + 1 if K is None else K
        return cls(items, workers, labels, n, m, K)

    @property
    def incidence(self):
        """A (n x mK) CSR, built once: A[i, a*K + l] counts worker a's label l on item i."""
        if self._incidence is None:
            ones = np.ones(len(self.items), dtype=np.float64)
            cols = self.workers * self.K + self.labels
            self._incidence = sp.csr_matrix((ones, (self.items, cols)), shape=(self.n, self.m * self.K))
        return self._incidence


def label_counts(ann):
    """N (n x K): how many times each item got each label."""
    flat = np.bincount(ann.items * ann.K + ann.labels, minlength=ann.n * ann.K)
    return flat.reshape(ann.n, ann.K).astype(np.float64)


def majority_vote(ann, rng):
    """Hard labels (n,): the most frequent label of each item, ties broken uniformly at random.

    Counts are integers, so adding U(0, 1) noise reorders tied labels only, uniformly.
    """
    counts = label_counts(ann)
    return np.argmax(counts + rng.random(counts.shape), axis=1)


def weighted_majority_vote(ann):
    """Soft labels (n x K): the frequency of each label among an item's labels."""
    counts = label_counts(ann)
    counts /= np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    return counts


def one_hot(hard, K):
    return np.eye(K)[hard]


def estimate_confusions(ann, item_dist, smoothing="release"):
    """Confusions pi (m x K x K) taking item_dist (n x K, rows of true-class probabilities) as truth:
    pi_a[k, l] = C[a, k, l] / sum_l' C[a, k, l'].

    smoothing="release" (the faithful default): a row with no data is uniform 1/K, zero entries
    become 1e-10, rows renormalised. Soft counts can be denormal rather than zero, so every count
    below 1e-10 is lifted to it (identical to the release on hard, integer counts).
    A float alpha adds alpha to every count instead (additive smoothing).
    """
    return normalise_confusions(confusion_counts(ann, item_dist), smoothing)


def confusion_counts(ann, item_dist):
    """C[a, k, l] = sum_i A[i, a*K + l] T[i, k] (m x K x K)."""
    counts = ann.incidence.T @ item_dist  # (mK x K): row a*K + l, column k
    return counts.reshape(ann.m, ann.K, ann.K).transpose(0, 2, 1)  # -> [a, k, l]


def normalise_confusions(counts, smoothing="release"):
    """Rows of counts (m x K x K) to confusions, smoothed as `estimate_confusions` says."""
    if smoothing == "release":
        rows = counts.sum(axis=2, keepdims=True)
        confusions = np.where(rows > 0, np.maximum(counts, RELEASE_ZERO), 1.0 / counts.shape[2])
    else:
        confusions = counts + float(smoothing)
    return confusions / confusions.sum(axis=2, keepdims=True)


def estimate_prior(item_dist):
    """Class prior q (K,): the mean true-class distribution over items."""
    return item_dist.mean(axis=0)


def log_joint(ann, confusions, prior=None):
    """log q[k] + sum over item i's labels of log pi_a[k, l]: (n x K), unnormalised."""
    log_pi = np.log(confusions).transpose(0, 2, 1).reshape(ann.m * ann.K, ann.K)  # row a*K + l
    logits = np.asarray(ann.incidence @ log_pi)
    if prior is not None:
        logits += np.log(prior)
    return logits


def normalise_log(logits):
    """Row-wise softmax in log space: finite and normalised whatever the magnitude of the logits.
    Also returns log sum_k exp(logits[i, k]) per row (the log evidence). Overwrites `logits`:
    in-place arithmetic saves allocating (and page-faulting) three n x K arrays per call."""
    top = logits.max(axis=1, keepdims=True)
    probs = np.exp(np.subtract(logits, top, out=logits), out=logits)
    total = probs.sum(axis=1, keepdims=True)
    probs /= total
    return probs, (top + np.log(total)).ravel()


def posterior(ann, confusions, prior=None):
    """P(y_i = k | labels of i) proportional to q[k] prod_a pi_a[k, label_a(i)]  (n x K)."""
    probs, _ = normalise_log(log_joint(ann, confusions, prior))
    return probs


@dataclass
class EMResult:
    posterior: np.ndarray
    confusions: np.ndarray
    prior: np.ndarray
    iterations: int
    log_likelihood: list
    converged: bool = True  # False: stopped by max_iter while the likelihood still gained tol or more


def dawid_skene(ann, max_iter=MAX_ITER, tol=TOL, smoothing="release", init=None):
    """Label-only EM (Dawid & Skene 1979) from the weighted-majority-vote start.

    M-step: pi, q from the current posterior T. E-step: T = posterior(pi, q).
    Stops when the mean per-item log-likelihood log sum_k q[k] prod pi_a[k, l] gains less
    than `tol`, or after `max_iter` rounds.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, not {max_iter}")
    item_dist = weighted_majority_vote(ann) if init is None else init
    trace, converged = [], False
    for iteration in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        confusions = estimate_confusions(ann, item_dist, smoothing)
        prior = estimate_prior(item_dist)
        item_dist, log_evidence = normalise_log(log_joint(ann, confusions, prior))
        trace.append(float(log_evidence.mean()))
        if len(trace) > 1 and trace[-1] - trace[-2] < tol:
            converged = True
            break
    return EMResult(item_dist, confusions, prior, iteration, trace, converged)


def mbem_step(ann, model_probs, hard=True, class_prior=False, smoothing="release"):
    """The M- and E-step of MBEM (the paper's Algorithm 1, steps 2c-2d) from a model's predicted
    class probabilities on the training items (n x K).

    hard=True takes t_i = argmax as the truth (the paper); hard=False uses the probabilities.
    class_prior=False is the release (no q); True uses q[k] = fraction of items with t = k.
    Returns (posterior, confusions, prior or None).
    """
    truth = one_hot(np.argmax(model_probs, axis=1), ann.K) if hard else np.asarray(model_probs, float)
    confusions = estimate_confusions(ann, truth, smoothing)
    prior = estimate_prior(truth) if class_prior else None
    return posterior(ann, confusions, prior), confusions, prior


def with_annotator(ann, labels):
    """`ann` with one more annotator, worker m, who labels every item: `labels` (n,)."""
    items, workers = np.concatenate([ann.items, np.arange(ann.n)]), np.concatenate([ann.workers, np.full(ann.n, ann.m)])
    return Annotations(items, workers, np.concatenate([ann.labels, labels]), ann.n, ann.m + 1, ann.K)


def model_as_annotator(ann, model_probs, use_model=True, max_iter=MAX_ITER, tol=TOL):
    """Worker confusions with the model's own confusion separated out: Dawid-Skene on the labels
    plus one more annotator, the model, who labels every item with its predicted class.

    MBEM's M-step takes the model's predictions t for the truth, so it estimates
    P(worker says l | model says k): a perfect worker looks as wrong as the model is. Here the
    model is an annotator with a confusion C[k, t] = P(model says t | truth k) of its own, estimated
    jointly with the workers' from the WMV start of the augmented labels, the model's vote
    counted once on every item. The model sees every item, so C is estimated from all n of them;
    the model and a worker are two views of each item, and the fit is unique up to a permutation of
    the classes when the views are conditionally independent given the truth and most workers are
    better than chance (a hammer's labels then pin down C). The model was trained on these labels,
    so its errors lean towards them (the assumption is broken by as much as it memorised: little
    after 10 epochs at r = 1, more with longer training).

    use_model=True: the targets are P(y | labels, the model's prediction), the model's vote in the
    E-step; False: P(y | labels) from the separated worker confusions, as MBEM's E-step has it.
    Returns (posterior, worker confusions m x K x K, the model's confusion K x K)."""
    hard = np.argmax(model_probs, axis=1)
    result = dawid_skene(with_annotator(ann, hard), max_iter=max_iter, tol=tol)
    confusions, model = result.confusions[:ann.m], result.confusions[ann.m]
    targets = result.posterior if use_model else posterior(ann, confusions, result.prior)
    return targets, confusions, model


def one_coin_step(ann, model_probs, model_accuracy=None, top=0.1, prior=None):
    """MBEM's M- and E-step for one-coin workers, corrected for the model's own accuracy.

    Each worker a is right with probability alpha_a and otherwise labels uniformly at random
    (pi_a = alpha_a I + (1 - alpha_a) / K; hammers and spammers are the ends). A worker's label
    agrees with the model's prediction with probability alpha_a rho + (1 - alpha_a) / K, whatever
    the model's errors, where rho is the model's accuracy on the training items, so
    alpha_a = (agreement_a - 1/K) / (rho - 1/K), clipped to [0, 1]. MBEM's own step estimates
    the product alpha_a rho, as if the model were right (rho = 1): a perfect worker comes out no
    better than the model.

    From one label per item, worker labels and the model's predictions fix only that product:
    rho itself needs one more fact. `model_accuracy` gives it (from a few items of known class);
    None estimates it under the assumption that the best workers are perfect, as the mean
    agreement of the `top` share of workers with the most agreement (with 500 labels a worker, an
    agreement is known to about 0.02). Returns (posterior, confusions m x K x K, rho)."""
    predicted = np.argmax(model_probs, axis=1)
    labelled = np.bincount(ann.workers, minlength=ann.m)
    agree = np.bincount(ann.workers, weights=(ann.labels == predicted[ann.items]), minlength=ann.m)
    agreement = agree / np.maximum(labelled, 1)
    if model_accuracy is None:
        active = np.flatnonzero(labelled)
        best = np.sort(agreement[active])[::-1][:max(1, int(round(top * len(active))))]
        model_accuracy = float(best.mean())
    chance = 1.0 / ann.K
    alpha = np.clip((agreement - chance) / max(model_accuracy - chance, 1e-6), 0.0, 1.0)
    confusions = alpha[:, None, None] * np.eye(ann.K) + (1 - alpha[:, None, None]) * chance
    confusions = normalise_confusions(confusions)  # perfect rows' zeros lifted to 1e-10, as the release smooths
    return posterior(ann, confusions, prior), confusions, model_accuracy


def per_class_coin_step(ann, model_probs, model_precision=None, top=0.1, least=10, prior=None):
    """MBEM's M- and E-step for workers with one coin per class, corrected for the model's own
    precision on each class.

    Given an item of class k, worker a is right with probability alpha_a[k] and otherwise labels
    uniformly at random (row k of pi_a is alpha_a[k] e_k + (1 - alpha_a[k]) / K): the paper's
    class-wise workers have each alpha_a[k] at 0 or 1, its hammer-spammer workers one alpha for
    every k, and the one-coin step (`one_coin_step`) is this with the rows pooled. Of the items the
    model calls k a share rho_k (its precision on k) are truly k, so a's labels there agree with
    the model with probability rho_k alpha_a[k] + (1 - alpha_a[k]) / K, taking a's coin on the
    model's wrong items to be alpha_a[k] too (exact for one-coin workers; for class-wise ones off by
    at most (1 - rho_k) / K). Hence alpha_a[k] = (agreement_a[k] - 1/K) / (rho_k - 1/K), clipped to
    [0, 1]; MBEM's own step takes every rho_k to be 1.

    From one label per item the rows fix only the products alpha_a[k] rho_k, so each rho_k needs
    one more fact: `model_precision` (K,) gives it (from a few items of known class); None
    estimates it under the assumption that on each class the best workers are perfect there. Among
    the rows with at least `least` labels on items the model calls k, those agreeing with it more
    than halfway from chance to the mean of the `top` share of rows are taken as the perfect ones,
    and rho_k is their label-weighted agreement. Averaging every such row, not a fixed top share,
    keeps the estimate from leaning on how many perfect rows a class happens to have: with 50
    labels a row an agreement is known to about 0.07, so the top share alone sits above rho_k, and
    a share wider than the perfect rows takes in guessers (docs/worker-estimates.md). A class with
    no such row keeps rho_k = 1, the release's assumption; a row without labels gets alpha 0 (a
    uniform row). Returns (posterior, confusions m x K x K, rho (K,))."""
    counts = confusion_counts(ann, one_hot(np.argmax(model_probs, axis=1), ann.K))
    labelled = counts.sum(axis=2)  # (m x K): a's labels on items the model calls k
    agreement = np.diagonal(counts, axis1=1, axis2=2) / np.maximum(labelled, 1)
    chance = 1.0 / ann.K
    rho = (precision_from_best_rows(agreement, labelled, top, least) if model_precision is None
           else np.asarray(model_precision, float))
    alpha = np.clip((agreement - chance) / np.maximum(rho - chance, 1e-6), 0.0, 1.0) * (labelled > 0)
    confusions = alpha[:, :, None] * np.eye(ann.K) + (1 - alpha[:, :, None]) * chance
    confusions = normalise_confusions(confusions)  # perfect rows' zeros lifted to 1e-10, as the release smooths
    return posterior(ann, confusions, prior), confusions, rho


def precision_from_best_rows(agreement, labelled, top=0.1, least=10):
    """The model's precision on each class (K,), taking the rows that agree with it most to be
    perfect workers' (`per_class_coin_step` says why): per class k, the label-weighted agreement of
    the rows with at least `least` labels that agree more than halfway from chance to the mean of
    the `top` share of them; 1 where no row has that many labels."""
    K = agreement.shape[1]
    rho = np.ones(K)
    for k in range(K):
        rows = labelled[:, k] >= least
        if rows.any():
            best = np.sort(agreement[rows, k])[::-1][:max(1, int(round(top * rows.sum())))].mean()
            perfect = rows & (agreement[:, k] >= min(best, (best + 1 / K) / 2))  # best at chance: the top rows
            rho[k] = np.average(agreement[perfect, k], weights=labelled[perfect, k])
    return rho


# MBEM's M-steps by --mbem-step: the release's, and the two corrected for the model's own errors
# (docs/worker-estimates.md); each is step(ann, model_probs) -> (posterior, confusions, extra)
MBEM_STEPS = {"release": mbem_step, "one-coin": one_coin_step, "per-class-coin": per_class_coin_step}


def mbem_update(ann, model_probs, step="release", class_prior=False):
    """MBEM's M- and E-step by the name of its M-step (MBEM_STEPS) from a model's probabilities on
    the labelled items (n x K), with class_prior the prior q[k] = the share of items the model puts
    in class k, as every step computes it. Returns (posterior, confusions)."""
    if step not in MBEM_STEPS:
        raise ValueError(f"MBEM's step is one of {', '.join(MBEM_STEPS)}, not {step!r}")
    if step == "release":
        posterior, confusions, _ = mbem_step(ann, model_probs, class_prior=class_prior)
    else:
        prior = estimate_prior(one_hot(np.argmax(model_probs, axis=1), ann.K)) if class_prior else None
        posterior, confusions, _ = MBEM_STEPS[step](ann, model_probs, prior=prior)
    return posterior, confusions


def worker_accuracy(confusions):
    """Per-worker accuracy under a uniform class distribution: mean of the diagonal of pi_a."""
    return np.diagonal(confusions, axis1=1, axis2=2).mean(axis=1)


def labels_right(ann, confusions, item_dist):
    """Each worker's estimated share of correct labels, sum_k w_a[k] pi_a[k, k], where w_a[k] is the
    share of a's labels given to items of class k under item_dist (n x K). The counterpart of a real
    worker's empirical accuracy, which counts labels: a class a worker never labelled weighs nothing
    here, where `worker_accuracy` would count its empty (uniform) row as 1/K. NaN without labels."""
    per_class = confusion_counts(ann, item_dist).sum(axis=2)  # (m x K): a's labels on items of class k
    with np.errstate(invalid="ignore", divide="ignore"):
        weights = per_class / per_class.sum(axis=1, keepdims=True)
    return (weights * np.diagonal(confusions, axis1=1, axis2=2)).sum(axis=1)


# ----------------------------------------------------------------------------- grouped classes

@dataclass
class Grouped:
    """Labels whose K classes fall in fixed groups of g ({0..g-1}, {g..2g-1}, ...), as the paper's
    ImageNet workers confuse a class only within its group: an item's labels and its truth lie in
    one group, and worker a has one g x g confusion pi_a shared by every group.

    `local` holds each label as its position within the group (Annotations with K = g) and
    `group` each item's group, so every estimator above runs unchanged on `local`: posteriors and
    targets are (group, n x g probabilities), confusions m x g x g, never n x K or m x K x K.
    P(y_i = group_i g + k | labels) is proportional to q[k] prod_a pi_a[k, label_a(i) - group_i g],
    the dense model whose confusions are block-diagonal with pi_a in every block (the prior q is
    over positions within a group, shared by the groups)."""

    local: Annotations
    group: np.ndarray
    K: int

    @property
    def g(self):
        return self.local.K

    def dense(self, probs):
        """n x K from n x g: each item's probabilities placed in its group (for small K only)."""
        out = np.zeros((len(probs), self.K))
        out[np.arange(len(probs))[:, None], self.group[:, None] * self.g + np.arange(self.g)] = probs
        return out

    def classes(self, local_hard):
        """Global class ids of per-item positions within the group."""
        return self.group * self.g + local_hard

    def columns(self, idx):
        """The K-class columns of items idx's groups (B x g): what a model's prediction is cut to."""
        return self.group[idx][:, None] * self.g + np.arange(self.g)

    def batch_targets(self, probs):
        """idx -> B x K soft targets of a batch: each item's g probabilities placed in its group
        (rows past the n items, images that only pass through, are zero). n x K never exists."""
        def assemble(idx):
            out = np.zeros((len(idx), self.K), dtype=np.float32)
            inside = np.flatnonzero(idx < len(probs))
            out[inside[:, None], self.columns(idx[inside])] = probs[idx[inside]]
            return out
        return assemble


def group_labels(ann, g):
    """Grouped form of `ann` (K a multiple of g); an item whose labels lie in two groups is an
    InputError naming it. Vectorised: an item's groups agree iff their variance is zero."""
    if ann.K % g:
        raise ValueError(f"K = {ann.K} classes do not fall in groups of {g}")
    label_group = (ann.labels // g).astype(np.float64)
    count = np.bincount(ann.items, minlength=ann.n)
    total = np.bincount(ann.items, weights=label_group, minlength=ann.n)
    squares = np.bincount(ann.items, weights=label_group ** 2, minlength=ann.n)
    mixed = np.flatnonzero(count * squares != total ** 2)  # exact: small integers in float64
    if len(mixed):
        i = mixed[0]
        raise InputError(f"{len(mixed)} items have labels in two groups of {g} classes, e.g. item {i} with labels "
                         f"{sorted(set(ann.labels[ann.items == i].tolist()))}")
    group = (total / np.maximum(count, 1)).astype(np.int64)
    return Grouped(Annotations(ann.items, ann.workers, ann.labels % g, ann.n, ann.m, g), group, ann.K)


def aggregate(ann, method, rng, max_iter=MAX_ITER, tol=TOL):
    """An EMResult (posterior n x K, confusions m x K x K, ...) for the label-only methods mv, wmv,
    em: the confusions of MV and WMV are estimated from their own posterior, as MBEM's M-step
    would, in no iteration."""
    if method == "em":
        return dawid_skene(ann, max_iter=max_iter, tol=tol)
    if method == "mv":
        probs = one_hot(majority_vote(ann, rng), ann.K)
    elif method == "wmv":
        probs = weighted_majority_vote(ann)
    else:
        raise ValueError(f"{method!r} is not a label-only method ({', '.join(LABEL_ONLY)})")
    return EMResult(probs, estimate_confusions(ann, probs), None, 0, [])
