"""The numpy input pipeline both trainers share (resnet.py for MXNet, resnet_torch.py for
PyTorch): the release's augmentation and a background-thread batch iterator.

Images are uint8 (N, C, H, W) in memory; batches come out as float32 for the network.
"""

import queue
import threading

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


def batches(images, targets, batch_size, rng=None, shuffle=False, pad=0, drop_last=False):
    """Yield (float32 images, float32 targets or None) batches in order, or in a fresh random order
    each call when `shuffle`; augmented when pad > 0 (random offsets and mirrors from `rng`);
    without the last, short batch when `drop_last` (one shape for every training step).
    A daemon thread prepares the next batch while the caller trains on this one."""
    n = len(images)
    order = rng.permutation(n) if shuffle else np.arange(n)
    last = n - n % batch_size if drop_last else n
    ready = queue.Queue(maxsize=2)

    def produce():
        for start in range(0, last, batch_size):
            idx = order[start:min(start + batch_size, last)]
            x = augment(images[idx], rng, pad) if pad else images[idx]
            ready.put((x.astype(np.float32), None if targets is None else targets[idx].astype(np.float32)))
        ready.put(None)

    threading.Thread(target=produce, daemon=True).start()
    while (item := ready.get()) is not None:
        yield item


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
