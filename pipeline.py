"""What both trainers share (resnet.py for MXNet, resnet_torch.py for PyTorch): the numpy input
pipeline (the release's augmentation, a background-thread batch iterator), the network's shape
and the --gpus parser.

Images are uint8 (N, C, H, W) in memory; batches come out as float32 for the network.
"""

import queue
import threading
from fractions import Fraction

import numpy as np


def augment(images, rng, pad=4, fill=127):
    """The release's augmentation, vectorised: pad by `pad` pixels with `fill`, take a random crop
    of the original size at one random offset per image, mirror half of the images.
    images: uint8 (N, C, H, W) -> uint8 (N, C, H, W)."""
    N, C, H, W = images.shape
    padded = np.full((N, C, H + 2 * pad, W + 2 * pad), fill, dtype=np.uint8)
    padded[:, :, pad:pad + H, pad:pad + W] = images
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, N))
    rows = dy[:, None] + np.arange(H)  # (N, H)
    cols = dx[:, None] + np.arange(W)  # (N, W)
    mirror = rng.random(N) < 0.5
    cols = np.where(mirror[:, None], cols[:, ::-1], cols)
    return padded[np.arange(N)[:, None, None, None], np.arange(C)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def batches(images, batch_size, rng=None, shuffle=False, pad=0, drop_last=False):
    """Yield (float32 images, their indices) batches in order, or in a fresh random order each
    call when `shuffle`; augmented when pad > 0 (random offsets and mirrors from `rng`); without
    the last, short batch when `drop_last` (one shape for every training step).

    `images` is a uint8 array (N, C, H, W), prepared here by a daemon thread one batch ahead of
    the caller, or an image stream with a batches() method of its own (imagenet.FolderImages:
    JPEGs decoded by worker processes, augmented by the standard recipe when pad > 0)."""
    if hasattr(images, "batches"):
        yield from images.batches(batch_size, rng, shuffle=shuffle, train=pad > 0, drop_last=drop_last)
        return
    n = len(images)
    order = rng.permutation(n) if shuffle else np.arange(n)
    last = n - n % batch_size if drop_last else n
    ready = queue.Queue(maxsize=2)

    def produce():
        for start in range(0, last, batch_size):
            idx = order[start:min(start + batch_size, last)]
            x = augment(images[idx], rng, pad) if pad else images[idx]
            ready.put((x.astype(np.float32), idx))
        ready.put(None)

    threading.Thread(target=produce, daemon=True).start()
    while (item := ready.get()) is not None:
        yield item


def rows(targets, idx):
    """The soft targets of the images `idx` as float32: rows of an n x K array, or what a callable
    assembles (the grouped form's n x g probabilities placed in each item's group)."""
    return np.asarray(targets(idx) if callable(targets) else targets[idx], dtype=np.float32)


def gather(probs, idx, columns):
    """probs (B x K) reduced to each row's `columns(idx)` (B x g), renormalised; all of it without."""
    if columns is None:
        return probs
    picked = np.take_along_axis(probs, columns(idx), axis=1)
    return picked / picked.sum(axis=1, keepdims=True)


def gpu_ids(gpus):
    """--gpus as a list of ids: None or '' -> [] (the CPU); '0' or '0,1' -> [0] or [0, 1].
    Raises ValueError, with the flag's name, on anything else."""
    if gpus is None or str(gpus).strip() == "":
        return []
    try:
        ids = [int(g) for g in str(gpus).split(",")]
    except ValueError:
        raise ValueError(f"--gpus takes comma-separated GPU ids like 0 or 0,1, not {gpus!r}") from None
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"--gpus ids must be distinct and non-negative, not {gpus!r}")
    return ids


IMAGENET_UNITS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}  # basic blocks per stage (He et al. 2016)


def stages(depth, imagenet):
    """(units per stage, filters per stage): CIFAR's 6n + 2 with 16/32/64 filters, or the ImageNet
    form's 18 or 34 with 64/128/256/512 filters."""
    if imagenet:
        if depth not in IMAGENET_UNITS:
            raise ValueError(f"the ImageNet ResNet has depth 18 or 34, not {depth}")
        return IMAGENET_UNITS[depth], (64, 128, 256, 512)
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), not {depth}")
    return ((depth - 2) // 6,) * 3, (16, 32, 64)


DROPS = (Fraction(2, 3), Fraction(5, 6))  # the release: x0.1 after epochs 40 and 50 of 60
IMAGENET_DROPS = (Fraction(1, 3), Fraction(2, 3))  # the standard ImageNet schedule: after 30 and 60 of 90


def update_steps(updates, milestones):
    """The update counts after which the learning rate falls x0.1: floor(updates x f) for each
    fraction f (exact: Fractions), at least 1 and strictly increasing, as MXNet's
    MultiFactorScheduler needs them."""
    steps = []
    for fraction in milestones:
        steps.append(max(int(updates * fraction), steps[-1] + 1 if steps else 1))
    return steps
