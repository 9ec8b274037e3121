"""Simulated crowd workers and the noisy labels they give.

A worker a is a confusion matrix pi_a (K x K): pi_a[k, l] = P(a answers l | true class k).
Labels are stored sparsely, one entry per label, as three int arrays (item, worker, label):
memory O(labels), never an n x m x K array. Every random draw comes from the
`numpy.random.Generator` passed in.
"""

import numpy as np

# The release's CIFAR-10 fixed-budget sweep: (redundancy r, items n), budget about 50,000 labels.
RELEASE_PLAN = [(13, 4000), (7, 7000), (5, 10000), (3, 17000), (1, 50000)]


def hammer_spammer(m, K, gamma, rng):
    """Each worker is a hammer (identity) with probability gamma, else a spammer.

    The release's spammer is 1/K everywhere plus 0.01 on the diagonal, rows renormalised
    (a perfectly flat row would leave ties everywhere downstream).
    """
    spammer = np.full((K, K), 1.0 / K) + 0.01 * np.eye(K)
    spammer /= spammer.sum(axis=1, keepdims=True)
    is_hammer = rng.random(m) < gamma
    return np.where(is_hammer[:, None, None], np.eye(K), spammer)


def class_wise_hammer_spammer(m, K, gamma, rng):
    """Every (worker, true class) row is drawn on its own: a one-hot row of the true class with
    probability gamma, else ones with 1 + U(0.1, 0.11) on the diagonal, renormalised (release)."""
    is_hammer = rng.random((m, K)) < gamma
    spammer = np.ones((m, K, K))
    spammer[:, np.arange(K), np.arange(K)] = 1.0 + rng.uniform(0.1, 0.11, size=(m, K))
    spammer /= spammer.sum(axis=2, keepdims=True)
    return np.where(is_hammer[:, :, None], np.eye(K)[None], spammer)


WORKER_MODELS = {"hammer-spammer": hammer_spammer, "class-wise": class_wise_hammer_spammer}


def simulate_workers(m, K, gamma, rng, model="hammer-spammer", group_size=None):
    """Confusions for m workers: (m, K, K), or (m, g, g) when `group_size` g is given.

    With a group size (the paper's ImageNet workers, g = 10 for K = 1000), classes fall into
    fixed groups {0..g-1}, {g..2g-1}, ... and a worker confuses a class only inside its group,
    with one g x g matrix shared by every group.
    """
    if group_size is not None:
        if K % group_size:
            raise ValueError(f"K={K} is not a multiple of group_size={group_size}")
        K = group_size
    return WORKER_MODELS[model](m, K, gamma, rng)


def distinct_workers(n, r, m, rng):
    """(n, r) worker ids, r distinct ones per item, each r-subset equally likely.

    Floyd's sampling, vectorised over items: r draws, each touching an (n, r) array, so memory
    is O(n r) rather than the O(n m) of argsort-of-uniforms.
    """
    if not 1 <= r <= m:
        raise ValueError(f"redundancy r={r} must lie in [1, m={m}]")
    chosen = np.empty((n, r), dtype=np.int64)
    for col, top in enumerate(range(m - r, m)):
        pick = rng.integers(0, top + 1, size=n)
        taken = (chosen[:, :col] == pick[:, None]).any(axis=1)
        chosen[:, col] = np.where(taken, top, pick)
    return chosen


def simulate_labels(true_labels, confusions, redundancy, rng):
    """Each item gets `redundancy` labels from distinct workers drawn uniformly at random, each
    label drawn from row true_label of the worker's confusion.

    Returns (item, worker, label) int64 arrays of length n * redundancy, sorted by item.
    Confusions of shape (m, g, g) with g < K act inside groups of g classes (see
    `simulate_workers`); K is then read off the true labels' group.
    """
    true_labels = np.asarray(true_labels, dtype=np.int64)
    n, (m, g, _) = len(true_labels), confusions.shape
    workers = distinct_workers(n, redundancy, m, rng).ravel()
    items = np.repeat(np.arange(n), redundancy)
    truth = true_labels[items]
    group, local = np.divmod(truth, g)
    cumulative = np.cumsum(confusions, axis=2)
    cumulative[:, :, -1] = 1.0  # guard the inverse-CDF draw against round-off in row sums
    u = rng.random(len(items))
    local_label = (u[:, None] >= cumulative[workers, local]).sum(axis=1)
    return items, workers, group * g + local_label


def fixed_budget_plan(budget, redundancies):
    """[(r, n)] with n = budget // r items for each redundancy."""
    return [(int(r), budget // int(r)) for r in redundancies]
