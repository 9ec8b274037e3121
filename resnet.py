"""The release's pre-activation ResNet in MXNet Gluon, and its training on soft targets.

Network (He et al. 2016, "Identity Mappings"; depth 6n + 2): BatchNorm on the raw input
instead of mean/std normalisation, a 3x3 convolution to 16 channels, three stages of n basic
units with 16/32/64 filters (stride 2 at the second and third), a 1x1 projection shortcut at
the first unit of every stage, then BN-ReLU, global average pool, dense, log-softmax.

Loss on a soft target q (the posterior of the true class): -sum_k q_k log p_k, batch mean.

Training as released: Nesterov momentum 0.9, learning rate 0.5 at batch 500 (linear in the
batch size), weight decay 1e-4 on weights and BatchNorm scales only (`decayed`), x0.1 after
2/3 and 5/6 of the epochs, Xavier init (gaussian, fan-in, magnitude 2). The input pipeline
(augmentation, batches) is pipeline.py, shared with the PyTorch trainer resnet_torch.py.
Speed choices, none of which changes the algorithm (bench/bench_train.py measures them):
- OMP_NUM_THREADS = the core count, set before mxnet loads: with its default, training here
  used one of the two cores (user time = wall time), the largest single gain;
- the loss lives inside the hybridized graph, so one cached graph runs forward and loss;
- static_alloc/static_shape: memory is planned once, not per batch (the last short batch
  of an epoch is dropped, so every batch has one shape; the release's iterator wrapped around
  to fill it instead);
- a background thread augments the next batch while the current one trains;
- loss and accuracy accumulate on the device and are read once per epoch (each read blocks).
Never run two MXNet trainings at once on one machine: OpenMP threads spin while they wait, and
two processes oversubscribing the cores slow each other down by far more than half.
"""

import os
import sys
import time
import warnings

if "mxnet" in sys.modules and "OMP_NUM_THREADS" not in os.environ:
    warnings.warn("mxnet was imported before resnet with OMP_NUM_THREADS unset: training may use fewer "
                  "cores than it could; import resnet first or set OMP_NUM_THREADS", stacklevel=2)
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))  # one OpenMP thread per core

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402
from mxnet.gluon import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from pipeline import DROPS, batches, gather, gpu_ids, rows, stages, update_steps  # noqa: E402

BN = {"epsilon": 2e-5, "momentum": 0.9}  # the release's BatchNorm settings


def parse_gpus(gpus):
    """None or '' -> [cpu]; '0' or '0,1' -> those GPUs. Raises ValueError on anything else."""
    ids = gpu_ids(gpus)
    return [mx.gpu(i) for i in ids] if ids else [mx.cpu()]


class Unit(nn.HybridBlock):
    """Pre-activation basic unit: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the shortcut. The
    projection (1x1, strided) reads the pre-activated input, as the release does."""

    def __init__(self, channels, stride, project):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm(**BN), nn.BatchNorm(**BN)
        self.conv1 = nn.Conv2D(channels, 3, stride, 1, use_bias=False)
        self.conv2 = nn.Conv2D(channels, 3, 1, 1, use_bias=False)
        self.project = nn.Conv2D(channels, 1, stride, use_bias=False) if project else None

    def hybrid_forward(self, F, x):
        act = F.Activation(self.bn1(x), act_type="relu")
        shortcut = self.project(act) if self.project is not None else x
        out = self.conv1(act)
        out = self.conv2(F.Activation(self.bn2(out), act_type="relu"))
        return out + shortcut


class ResNet(nn.HybridBlock):
    """Pre-activation ResNet returning log-probabilities (batch x classes): CIFAR's depth 6n + 2
    (a 3x3 stem), or with imagenet=True ResNet-18/34 (a 7x7 stride-2 stem, BN-ReLU, 3x3 max pool),
    as the release's network builds both (its data_type "cifar10" and "imagenet")."""

    def __init__(self, depth, classes, imagenet=False):
        super().__init__()
        units, filters = stages(depth, imagenet)
        self.features = nn.HybridSequential()
        self.features.add(nn.BatchNorm(scale=False, **BN))  # BN on the raw input (fixed gamma, as released)
        if imagenet:
            self.features.add(nn.Conv2D(filters[0], 7, 2, 3, use_bias=False), nn.BatchNorm(**BN),
                              nn.Activation("relu"), nn.MaxPool2D(3, 2, 1))
        else:
            self.features.add(nn.Conv2D(filters[0], 3, 1, 1, use_bias=False))
        for stage, (count, channels) in enumerate(zip(units, filters, strict=True)):
            for unit in range(count):
                self.features.add(Unit(channels, 2 if stage and not unit else 1, project=unit == 0))
        self.features.add(nn.BatchNorm(**BN), nn.Activation("relu"), nn.GlobalAvgPool2D(), nn.Flatten())
        self.output = nn.Dense(classes)

    def hybrid_forward(self, F, x):
        return F.log_softmax(self.output(self.features(x)), axis=-1)


class SoftTargetLoss(nn.HybridBlock):
    """Wraps a network: (images, soft targets) -> per-item loss -sum_k q_k log p_k, and log p."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def hybrid_forward(self, F, x, target):
        log_probs = self.net(x)
        return -F.sum(target * log_probs, axis=1), log_probs


def build(depth, classes, contexts, seed, imagenet=False):
    """A fresh ResNet with the release's Xavier init, hybridized with a static memory plan."""
    mx.random.seed(seed)
    net = ResNet(depth, classes, imagenet)
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2), ctx=contexts)
    net.hybridize(static_alloc=True, static_shape=True)
    return net


def split(array, contexts):
    """Split a batch over the devices (data parallelism); one device keeps it whole."""
    if len(contexts) == 1:
        return [array]
    return gluon.utils.split_data(array, len(contexts), even_split=False)


def decayed(name):
    """Whether weight decay applies to a parameter: the release trains with MXNet's Module API,
    whose optimizer (Optimizer.set_wd_mult, mxnet 0.x to 1.9.1) decays only names ending in
    _weight or _gamma: convolution and dense weights and BatchNorm scales, not BatchNorm shifts
    or the dense bias. A Gluon Trainer would decay every parameter."""
    return name.endswith(("_weight", "_gamma"))


def nag(net, lr, schedule=None, wd=1e-4):
    """The release's optimizer: NAG, momentum 0.9, weight decay on the `decayed` parameters only."""
    params = net.collect_params()
    for name, param in params.items():
        param.wd_mult = 1.0 if decayed(name) else 0.0
    options = {"learning_rate": lr, "momentum": 0.9, "wd": wd}
    return gluon.Trainer(params, "nag", options if schedule is None else dict(options, lr_scheduler=schedule))


def predict_proba(net, images, contexts, batch_size=500, pad=0, rng=None, columns=None):
    """Class probabilities (n, K) for uint8 images (or an image stream), in batches; rows sum to 1.
    With pad > 0 each image is augmented once first (the release predicts the training items
    through its training iterator: randomly cropped and mirrored). columns(idx) -> (B, g) keeps
    only those classes of each row (the grouped form: n x g, never n x K)."""
    out = []
    for x, idx in batches(images, batch_size, rng, pad=pad):
        parts = [net(mx.nd.array(part, ctx=ctx)) for part, ctx in zip(split(x, contexts), contexts, strict=True)]
        probs = np.exp(np.concatenate([p.asnumpy() for p in parts]).astype(np.float64))
        out.append(gather(probs / probs.sum(axis=1, keepdims=True), idx, columns))
    return np.concatenate(out)


def accuracy(net, images, labels, contexts, batch_size=500):
    return float((predict_proba(net, images, contexts, batch_size).argmax(axis=1) == labels).mean())


def train(images, targets, classes, depth=20, epochs=60, batch_size=500, lr=None, gpus=None, seed=0,
          select_epoch="last", val=None, test=None, pad=4, shuffle=True, progress=True, desc="train", contexts=None,
          imagenet=False, milestones=DROPS):
    """Train the release's ResNet on soft targets (n x K rows summing to 1, or to 0 for an image
    that only passes through: no gradient, but BatchNorm statistics, weight decay and momentum).

    select_epoch: 'last' keeps the final weights; 'val' the epoch with the best accuracy on
    `val` = (images, labels); 'test' the best on `test` = (images, labels), the release's
    behaviour, which peeks at test labels and so reports an optimistic figure. `pad` is the
    augmentation's padding (0: no augmentation); shuffle=False keeps one batch order for every
    epoch (the release). Only full batches are trained on.
    Returns (net, history): history is one dict per epoch with loss, train_acc (against the
    argmax of the targets, over the rows that have one), val_acc/test_acc when given, updates
    (optimizer steps so far), img_per_s, seconds.
    """
    contexts = contexts or parse_gpus(gpus)  # explicit contexts: tests run the multi-device path on CPUs
    batch_size = min(batch_size, len(images))
    lr = 0.5 * batch_size / 500 if lr is None else lr
    rng = np.random.default_rng(seed)
    net = build(depth, classes, contexts, seed, imagenet)
    model = SoftTargetLoss(net)
    model.hybridize(static_alloc=True, static_shape=True)
    steps = len(images) // batch_size
    schedule = mx.lr_scheduler.MultiFactorScheduler(step=update_steps(steps * epochs, milestones), factor=0.1,
                                                    base_lr=lr)
    trainer = nag(net, lr, schedule)
    monitor = {"val": val, "test": test}
    if select_epoch != "last" and monitor.get(select_epoch) is None:
        raise ValueError(f"select_epoch={select_epoch!r} needs {select_epoch} images and labels")
    history, best, best_params = [], -1.0, None
    for epoch in range(epochs):
        start = time.perf_counter()
        loss_sum = [mx.nd.zeros(1, ctx=c) for c in contexts]
        correct = [mx.nd.zeros(1, ctx=c) for c in contexts]
        counted = [mx.nd.zeros(1, ctx=c) for c in contexts]
        bar = tqdm(batches(images, batch_size, rng, shuffle=shuffle, pad=pad, drop_last=True), total=steps,
                   disable=not progress, desc=f"{desc} epoch {epoch + 1}/{epochs}", leave=False, unit="batch")
        for x, idx in bar:
            q = rows(targets, idx)
            xs = [mx.nd.array(p, ctx=c) for p, c in zip(split(x, contexts), contexts, strict=True)]
            qs = [mx.nd.array(p, ctx=c) for p, c in zip(split(q, contexts), contexts, strict=True)]
            with autograd.record():
                outs = [model(xi, qi) for xi, qi in zip(xs, qs, strict=True)]
            autograd.backward([loss for loss, _ in outs])
            trainer.step(batch_size)
            for i, ((loss, log_probs), qi) in enumerate(zip(outs, qs, strict=True)):
                has_target = qi.sum(axis=1) > 0
                loss_sum[i] += loss.sum()
                correct[i] += ((log_probs.argmax(axis=1) == qi.argmax(axis=1)) * has_target).sum()
                counted[i] += has_target.sum()
        seen = sum(float(c.asscalar()) for c in counted)
        record = {"epoch": epoch + 1, "loss": sum(float(s.asscalar()) for s in loss_sum) / max(seen, 1.0),
                  "train_acc": sum(float(c.asscalar()) for c in correct) / max(seen, 1.0)}
        seconds = time.perf_counter() - start  # after the reads above, which wait for the last step
        record.update(updates=trainer.optimizer.num_update, img_per_s=steps * batch_size / seconds, seconds=seconds)
        for name, data in monitor.items():
            if data is not None:
                record[f"{name}_acc"] = accuracy(net, data[0], data[1], contexts)
        history.append(record)
        if progress:
            extra = "".join(f" {k} {record[k]:.3f}" for k in ("val_acc", "test_acc") if k in record)
            tqdm.write(f"{desc} epoch {epoch + 1}/{epochs} loss {record['loss']:.3f} "
                       f"train_acc {record['train_acc']:.3f}{extra} {record['img_per_s']:.0f} img/s")
        if select_epoch != "last" and record[f"{select_epoch}_acc"] > best:
            best = record[f"{select_epoch}_acc"]
            best_params = {k: v.data(contexts[0]).copy() for k, v in net.collect_params().items()}
    if best_params is not None:
        for k, v in net.collect_params().items():
            v.set_data(best_params[k])
    return net, history
