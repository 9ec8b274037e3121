"""What both trainers share (resnet.py for MXNet, resnet_torch.py for PyTorch), written once: the
release's training recipe, the network's shape, the numpy input pipeline (the release's
augmentation, a background-thread batch iterator), the per-epoch record and the choice of the
tested epoch, and the --gpus parser.

Both trainers expose one contract: devices(gpus), build(depth, classes, gpus, seed, ...),
train(images, targets, classes, ...) -> (model, history), predict_proba(model, images, ...),
accuracy(model, images, labels, ...).

Images are uint8 (N, C, H, W) in memory; batches come out as float32 for the network.
"""

import math
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from tqdm import tqdm

# ----------------------------------------------------------------------------- the release's recipe
MOMENTUM = 0.9  # Nesterov momentum
WEIGHT_DECAY = 1e-4  # on `decayed` parameters only
BN_EPS = 2e-5  # BatchNorm epsilon
BN_MOMENTUM = 0.9  # MXNet's convention: the share of the running statistic kept each batch (PyTorch's 0.1)
INIT_MAGNITUDE = 2.0  # Xavier, gaussian, on the fan-in: weights ~ N(0, magnitude / fan_in)
DROPS = (Fraction(2, 3), Fraction(5, 6))  # the learning rate falls x0.1 after these shares of the updates
IMAGENET_DROPS = (Fraction(1, 3), Fraction(2, 3))  # the standard ImageNet schedule: after 30 and 60 of 90


def base_lr(batch_size, imagenet=False):
    """The release's 0.5 at batch 500, linear in the batch size (ImageNet's standard: 0.1 per 256)."""
    return 0.1 * batch_size / 256 if imagenet else 0.5 * batch_size / 500


def init_std(fan_in):
    """The standard deviation of a fresh weight: Xavier gaussian on the fan-in, magnitude 2."""
    return math.sqrt(INIT_MAGNITUDE / fan_in)


def decayed(name):
    """Whether weight decay applies to a parameter: the release trains with MXNet's Module API,
    whose optimizer (Optimizer.set_wd_mult, mxnet 0.x to 1.9.1) decays only names ending in
    _weight or _gamma: convolution and dense weights and BatchNorm scales, not BatchNorm shifts or
    the dense bias. PyTorch names the same tensors ...weight (a BatchNorm scale is its weight)."""
    return name.endswith(("weight", "gamma"))


def update_steps(updates, milestones):
    """The update counts after which the learning rate falls x0.1: floor(updates x f) for each
    fraction f (exact: Fractions), at least 1 and strictly increasing, as MXNet's
    MultiFactorScheduler needs them."""
    steps = []
    for fraction in milestones:
        steps.append(max(int(updates * fraction), steps[-1] + 1 if steps else 1))
    return steps


def learning_rate(base, update, drops):
    """MXNet's MultiFactorScheduler: the rate of update number `update` (from 1), x0.1 for every
    drop the count has passed."""
    return base * 0.1 ** sum(update > d for d in drops)


# ----------------------------------------------------------------------------- the input pipeline


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


# ----------------------------------------------------------------------------- the network's shape

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


# ----------------------------------------------------------------------------- one epoch's record

class Epochs:
    """The per-epoch record of a training and the choice of the model that is tested, for both
    trainers. select_epoch: 'last' keeps the final weights; 'val' the epoch with the best accuracy
    on `val` = (images, labels); 'test' the best on `test`, the release's behaviour, which peeks at
    the test labels and so reports an optimistic figure.

    Each record: epoch, loss (mean over the rows with a target), train_acc (against the argmax of
    the targets), lr (of the epoch's last update), updates (so far), img_per_s, seconds, and
    val_acc / test_acc when those sets are given."""

    def __init__(self, select_epoch, val, test, desc, epochs, progress, log=None):
        self.monitor = {name: data for name, data in (("val", val), ("test", test)) if data is not None}
        if select_epoch != "last" and select_epoch not in self.monitor:
            raise ValueError(f"select_epoch={select_epoch!r} needs {select_epoch} images and labels")
        self.select, self.desc, self.epochs, self.progress, self.log = select_epoch, desc, epochs, progress, log
        self.history, self.best, self.best_state, self.unkept = [], -1.0, None, False

    def say(self, line, always=False):
        """A line about the training: into the run's log file when it has one (EpochLog), on the
        screen unless that log keeps it off it (`always`: on the screen in any case)."""
        if self.log is not None:
            os.makedirs(os.path.dirname(os.path.abspath(self.log.path)), exist_ok=True)
            with open(self.log.path, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        if self.progress and (self.log is None or self.log.screen or always):
            tqdm.write(line)

    def bar(self, batches_, total):
        """The epoch's batches, with a progress bar on a terminal; in a log file (stderr not a
        terminal) only end()'s one plain line per epoch, no carriage-return bars."""
        epoch = len(self.history) + 1
        self.start = time.perf_counter()
        return tqdm(batches_, total=total, disable=not (self.progress and sys.stderr.isatty()),
                    desc=f"{self.desc} epoch {epoch}/{self.epochs}", leave=False, unit="batch")

    def state(self):
        """What a checkpoint keeps of the record: the epochs so far and the best one's weights."""
        return {"history": self.history, "best": self.best, "best_state": self.best_state}

    def restore(self, state, resumed_from):
        self.history, self.best, self.best_state = state["history"], state["best"], state["best_state"]
        self.say(f"{self.desc}: resumed after epoch {len(self.history)} of {self.epochs} from {resumed_from}",
                 always=True)

    def not_resumed(self, checkpoint):
        """Say why a checkpoint file that is there is not resumed from."""
        self.say(f"{self.desc}: {checkpoint.path} is another training's (other settings, labels, targets or trainer "
                 "code) or cannot be read: training from the first epoch, and it will be overwritten", always=True)

    def keep(self, checkpoint, save):
        """Write this epoch's checkpoint with save(); a write that fails (a full disk) is said once and
        the training goes on: the checkpoint only shortens a resumed run."""
        try:
            save()
        except OSError as err:
            if not self.unkept:
                self.unkept = True
                self.say(f"{self.desc}: cannot write its checkpoint {checkpoint.path} ({err.strerror or err}); "
                         "the training goes on, and a run killed now resumes it from an earlier epoch or the first",
                         always=True)

    def end(self, loss_sum, correct, seen, updates, lr, images, accuracy, snapshot):
        """Record the epoch just trained (call after the reads that wait for its last step);
        accuracy(images, labels) scores the model, snapshot() copies its weights when it is the best."""
        seconds = time.perf_counter() - self.start
        record = {"epoch": len(self.history) + 1, "loss": loss_sum / max(seen, 1.0),
                  "train_acc": correct / max(seen, 1.0), "lr": lr, "updates": updates,
                  "img_per_s": images / seconds, "seconds": seconds}
        for name, (x, y) in self.monitor.items():
            record[f"{name}_acc"] = accuracy(x, y)
        self.history.append(record)
        extra = "".join(f" {k} {record[k]:.3f}" for k in ("val_acc", "test_acc") if k in record)
        self.say(f"{self.desc} epoch {record['epoch']}/{self.epochs} loss {record['loss']:.3f} "
                 f"train_acc {record['train_acc']:.3f}{extra} {record['img_per_s']:.0f} img/s")
        if self.select != "last" and record[f"{self.select}_acc"] > self.best:
            self.best, self.best_state = record[f"{self.select}_acc"], snapshot()
        return record


@dataclass(frozen=True)
class Checkpoint:
    """Where a training keeps its state at the end of each epoch, and what it is a state of: `key`
    digests everything that decides the training (the caller's settings, seed, items and
    targets), so a file left by another training is never resumed. The trainer writes it
    atomically after every epoch but the last and removes it when the training is done."""

    path: str
    key: str


@dataclass(frozen=True)
class EpochLog:
    """Where a run's per-epoch lines go: appended to `path` (MBEM.py: <out>/train.log), and on the
    screen too when `screen` (MBEM.py -v); a terminal shows a progress bar either way."""

    path: str
    screen: bool = False
