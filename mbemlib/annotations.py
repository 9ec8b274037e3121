"""Real crowdsourced labels for the experiment (`MBEM.py --annotations answers.csv`): the CSV's
items matched to training images, its labels to the dataset's classes, and the fixed-budget
subsample at each redundancy.

Item ids name training images: for a class-folder source the image's path under train/
("airplane/0001.jpg", with or without the "train/" prefix), for --dataset cifar10 its index in
the official training order. Labels are the dataset's class names or their indices.
"""

from dataclasses import dataclass

import numpy as np

from mbemlib import aggregation as agg
from mbemlib.cli import InputError
from mbemlib.label_files import read_answers


@dataclass
class RealLabels:
    """Every label of the CSV, by training image: label j is `classes[label[j]]` given by worker
    `worker[j]` to training image `image[j]`."""

    image: np.ndarray
    worker: np.ndarray
    label: np.ndarray
    worker_names: list
    m: int

    def per_image(self, N):
        return np.bincount(self.image, minlength=N)


def first(names, limit=5):
    shown = ", ".join(repr(str(n)) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def match_items(item_names, train_names):
    """Training-image index of each CSV item; InputError naming the first unknown ones."""
    if train_names is None:
        raise InputError("this dataset has no image names to match annotations to (use --dataset cifar10 "
                             "or a class-folder --source)")
    index = {name: i for i, name in enumerate(train_names)}
    # a class folder's images are named "<class>/<file>": "train/<class>/<file>" names them too
    images = np.array([index.get(n, index.get(n[len("train/"):], -1) if n.startswith("train/") else -1)
                       for n in item_names], dtype=np.int64)
    unknown = [item_names[i] for i in np.flatnonzero(images < 0)]
    if unknown:
        raise InputError(f"{len(unknown)} items name no training image: {first(unknown)} (expected names "
                             f"like {train_names[0]!r})")
    return images


def match_classes(csv_classes, classes):
    """Dataset class of each CSV label: by name, else (when every label is an integer) by index."""
    index = {name: k for k, name in enumerate(classes)}
    if all(c in index for c in csv_classes):
        return np.array([index[c] for c in csv_classes], dtype=np.int64)
    if all(c.strip().lstrip("-").isdigit() for c in csv_classes):
        ks = np.array([int(c) for c in csv_classes], dtype=np.int64)
        bad = [c for c, k in zip(csv_classes, ks, strict=True) if not 0 <= k < len(classes)]
        if not bad:
            return ks
        raise InputError(f"labels {first(bad)} are not class indices 0..{len(classes) - 1}")
    unknown = [c for c in csv_classes if c not in index]
    raise InputError(f"labels {first(unknown)} are not classes of the dataset ({first(classes, 10)})")


def read(path, train_names, classes):
    """The CSV at `path` as RealLabels over the dataset's training images and classes, and the
    classes: the dataset's, or, for images without class folders, the labels' own (sorted)."""
    ann, item_names, worker_names, csv_classes = read_answers(path)
    images = match_items(item_names, train_names)
    classes = list(classes) or list(csv_classes)
    labels = match_classes(csv_classes, classes)
    real = RealLabels(images[ann.items], ann.workers, labels[ann.labels], [str(w) for w in worker_names], ann.m)
    return real, classes


def draw_per_item(item, r, rng):
    """r labels of each item, uniformly (all of an item's where it has fewer): each item's labels
    ordered by a random key, the first r kept. `item` is each label's item; returns the kept
    labels' indices, item by item."""
    order = np.lexsort((rng.random(len(item)), item))
    grouped = item[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    return order[rank < r]


def subsample(real, allowed, r, n, rng, K):
    """The fixed-budget cell at redundancy r: n images drawn from the `allowed` ones that have at
    least r labels, and r of each image's labels drawn at random (r = 0: every labelled allowed
    image with all its labels). Returns (image indices, Annotations over items 0..n-1)."""
    counts = real.per_image(len(allowed))
    eligible = np.flatnonzero(allowed & (counts >= max(r, 1)))
    if r == 0:
        images = eligible
    else:
        if len(eligible) < n:
            raise InputError(f"redundancy {r} with {n} items needs {n} images with at least {r} labels; the "
                                 f"annotations have {len(eligible)} (lower the budget or the redundancy)")
        images = rng.choice(eligible, size=n, replace=False)
    position = np.full(len(allowed), -1, dtype=np.int64)
    position[images] = np.arange(len(images))
    keep = np.flatnonzero(position[real.image] >= 0)
    if r:
        keep = np.sort(keep[draw_per_item(position[real.image[keep]], r, rng)])
    ann = agg.Annotations(position[real.image[keep]], real.worker[keep], real.label[keep], len(images), real.m, K)
    return images, ann


def empirical_accuracy(ann, truth):
    """Each worker's share of labels equal to the item's true class, over the items whose class is
    known (truth >= 0); NaN for workers without such labels."""
    known = truth[ann.items] >= 0
    right = np.bincount(ann.workers, weights=(ann.labels == truth[ann.items]) & known, minlength=ann.m)
    given = np.bincount(ann.workers, weights=known, minlength=ann.m)
    with np.errstate(invalid="ignore", divide="ignore"):
        return right / given
