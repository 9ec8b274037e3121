"""The release's pre-activation ResNet in MXNet Gluon, and its training on soft targets.

Network (He et al. 2016, "Identity Mappings"; depth 6n + 2): BatchNorm on the raw input
instead of mean/std normalisation, a 3x3 convolution to 16 channels, three stages of n basic
units with 16/32/64 filters (stride 2 at the second and third), a 1x1 projection shortcut at
the first unit of every stage, then BN-ReLU, global average pool, dense, log-softmax.

Loss on a soft target q (the posterior of the true class): -sum_k q_k log p_k, batch mean.

Training as released, with the recipe written once in mbemlib/pipeline.py and read here and by the
PyTorch trainer resnet_torch.py (the same functions, the same signatures): Nesterov momentum,
the learning rate linear in the batch size and its drops, weight decay on weights and BatchNorm
scales only, BatchNorm eps and momentum, Xavier init; the input pipeline and the per-epoch record.
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

import json
import os
import pickle
import sys
import tempfile
import warnings
from dataclasses import dataclass

if "mxnet" in sys.modules and "OMP_NUM_THREADS" not in os.environ:
    warnings.warn("mxnet was imported before resnet with OMP_NUM_THREADS unset: training may use fewer "
                  "cores than it could; import resnet first or set OMP_NUM_THREADS", stacklevel=2)
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))  # one OpenMP thread per core

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402
from mxnet.gluon import nn  # noqa: E402

from mbemlib.atomic import atomic_write, replacing  # noqa: E402
from mbemlib.pipeline import (  # noqa: E402
    BN_EPS,
    BN_MOMENTUM,
    DROPS,
    INIT_MAGNITUDE,
    MOMENTUM,
    WEIGHT_DECAY,
    Epochs,
    base_lr,
    batches,
    decayed,
    gather,
    rows,
    stages,
    update_steps,
)

BN = {"epsilon": BN_EPS, "momentum": BN_MOMENTUM}


def to_devices(gpus):
    """--gpus ids ([] or None: the CPU) as MXNet contexts."""
    return [mx.gpu(i) for i in gpus] if gpus else [mx.cpu()]


@dataclass
class Model:
    """A trained network and the contexts it runs on."""

    net: nn.HybridBlock
    contexts: list


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


def build(depth, classes, gpus=None, seed=0, imagenet=False, precision="fp32", compile=False, devices=None,
          in_channels=3):
    """A fresh ResNet with the release's Xavier init, hybridized with a static memory plan (MXNet's
    own graph compilation, always on: `compile` is torch.compile's switch, and MXNet infers
    `in_channels` at the first batch). fp32 only."""
    if precision != "fp32":
        raise ValueError(f"--precision {precision} is for --backend torch")
    contexts = devices or to_devices(gpus)
    mx.random.seed(seed)
    net = ResNet(depth, classes, imagenet)
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=INIT_MAGNITUDE), ctx=contexts)
    net.hybridize(static_alloc=True, static_shape=True)
    return Model(net, contexts)


def split(array, contexts):
    """Split a batch over the devices (data parallelism); one device keeps it whole."""
    if len(contexts) == 1:
        return [array]
    return gluon.utils.split_data(array, len(contexts), even_split=False)


def nag(net, lr, schedule=None):
    """The release's optimizer: NAG with weight decay on the `decayed` parameters only (a Gluon
    Trainer alone would decay every parameter)."""
    params = net.collect_params()
    for name, param in params.items():
        param.wd_mult = 1.0 if decayed(name) else 0.0
    options = {"learning_rate": lr, "momentum": MOMENTUM, "wd": WEIGHT_DECAY}
    return gluon.Trainer(params, "nag", options if schedule is None else dict(options, lr_scheduler=schedule))


MODEL_SUFFIX = ".params"


def save_model(model, path, meta):
    """The network's weights (MXNet's .params) and `meta` (classes, depth, imagenet, in_channels,
    ...) beside them as <path>.json."""
    with replacing(path) as tmp:
        model.net.save_parameters(tmp)
    atomic_write(path + ".json", json.dumps(dict(meta)).encode())


def save_checkpoint(checkpoint, net, trainer, rng, log):
    """One pickle: the weights and the best epoch's as numpy, the trainer's states as MXNet writes them."""
    os.makedirs(os.path.dirname(os.path.abspath(checkpoint.path)), exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:  # and writes them to a file only
        trainer.save_states(os.path.join(folder, "states"))
        with open(os.path.join(folder, "states"), "rb") as f:
            states = f.read()
    record = log.state()
    if record["best_state"] is not None:
        record = dict(record, best_state={k: v.asnumpy() for k, v in record["best_state"].items()})
    state = {"key": checkpoint.key, "net": {k: v.data().asnumpy() for k, v in net.collect_params().items()},
             "trainer": states, "rng": rng.bit_generator.state, "log": record}
    atomic_write(checkpoint.path, pickle.dumps(state))


def load_checkpoint(checkpoint):
    """The state a checkpoint file holds for this very training, or None (none, unreadable, or another's)."""
    try:  # the run's own file
        with open(checkpoint.path, "rb") as f:
            saved = pickle.load(f)
    except (OSError, EOFError, ValueError, pickle.UnpicklingError):
        return None
    return saved if isinstance(saved, dict) and saved.get("key") == checkpoint.key else None


def load_model(path, gpus=None):
    """(Model, meta) from save_model's files, on the CPU or `gpus`: predict_proba(model, images)
    gives the class probabilities, columns in the order of meta["classes"]."""
    with open(path + ".json") as f:
        meta = json.load(f)
    model = build(meta["depth"], len(meta["classes"]), gpus, imagenet=meta["imagenet"])
    model.net.load_parameters(path, ctx=model.contexts)
    return model, meta


def predict_proba(model, images, batch_size=500, pad=0, rng=None, columns=None):
    """Class probabilities (n, K) for uint8 images (or an image stream), in batches; rows sum to 1.
    With pad > 0 each image is augmented once first (the release predicts the training items
    through its training iterator: randomly cropped and mirrored). columns(idx) -> (B, g) keeps
    only those classes of each row (the grouped form: n x g, never n x K)."""
    out = []
    for x, idx in batches(images, batch_size, rng, pad=pad):
        parts = [model.net(mx.nd.array(part, ctx=ctx))
                 for part, ctx in zip(split(x, model.contexts), model.contexts, strict=True)]
        probs = np.exp(np.concatenate([p.asnumpy() for p in parts]).astype(np.float64))
        out.append(gather(probs / probs.sum(axis=1, keepdims=True), idx, columns))
    return np.concatenate(out)


def accuracy(model, images, labels, batch_size=500):
    return float((predict_proba(model, images, batch_size).argmax(axis=1) == labels).mean())


def train(images, targets, classes, depth=20, epochs=60, batch_size=500, lr=None, gpus=None, seed=0,
          select_epoch="last", val=None, test=None, pad=4, shuffle=True, precision="fp32", compile=False,
          progress=True, desc="train", devices=None, imagenet=False, milestones=DROPS, crowd=None, checkpoint=None,
          epoch_log=None):
    """Train the release's ResNet on soft targets (n x K rows summing to 1, or to 0 for an image
    that only passes through: no gradient, but BatchNorm statistics, weight decay and momentum).

    lr None: pipeline.base_lr. select_epoch: see pipeline.Epochs. `pad` is the augmentation's
    padding (0: no augmentation); shuffle=False keeps one batch order for every epoch (the
    release). Only full batches are trained on. devices: explicit contexts (tests run the
    multi-device path on CPU contexts). `crowd` (end-to-end crowd heads) is the torch trainer's
    alone. checkpoint (a pipeline.Checkpoint) keeps the state after each epoch and resumes from it:
    the weights, the optimizer's momentum and update count (its learning-rate position), the
    batch order's random state and the record. MXNet's oneDNN kernels are not deterministic, so a
    resumed training ends as close to an uninterrupted one as two uninterrupted runs are to each
    other (docs/backends.md). epoch_log (a pipeline.EpochLog) takes the per-epoch lines (else the
    screen). Returns (model, history), history as pipeline.Epochs keeps it.
    """
    if crowd is not None:
        raise ValueError("crowd heads (Crowd Layer, CoNAL) train on the torch trainer: --backend torch")
    batch_size = min(batch_size, len(images))
    lr = base_lr(batch_size, imagenet) if lr is None else lr
    rng = np.random.default_rng(seed)
    model = build(depth, classes, gpus, seed, imagenet, precision, compile, devices, images.shape[1])
    net, contexts = model.net, model.contexts
    loss_net = SoftTargetLoss(net)
    loss_net.hybridize(static_alloc=True, static_shape=True)
    steps = len(images) // batch_size
    schedule = mx.lr_scheduler.MultiFactorScheduler(step=update_steps(steps * epochs, milestones), factor=0.1,
                                                    base_lr=lr)
    trainer = nag(net, lr, schedule)
    log = Epochs(select_epoch, val, test, desc, epochs, progress, epoch_log)
    first = 0
    saved = load_checkpoint(checkpoint) if checkpoint is not None else None
    if saved is None and checkpoint is not None and os.path.exists(checkpoint.path):
        log.not_resumed(checkpoint)
    if saved is not None:
        for c in contexts:  # one pass finishes Gluon's deferred initialisation, which set_data needs
            net(mx.nd.zeros((1, *images.shape[1:]), ctx=c))
        for k, v in net.collect_params().items():
            v.set_data(mx.nd.array(saved["net"][k], dtype=saved["net"][k].dtype))
        with tempfile.TemporaryDirectory() as folder:  # MXNet reads optimizer states from a file only
            with open(os.path.join(folder, "states"), "wb") as f:
                f.write(saved["trainer"])
            trainer.load_states(os.path.join(folder, "states"))
        rng.bit_generator.state, first = saved["rng"], len(saved["log"]["history"])
        best = saved["log"]["best_state"]
        log.restore(dict(saved["log"], best_state=best and {k: mx.nd.array(v) for k, v in best.items()}),
                    checkpoint.path)
    for epoch in range(first, epochs):
        loss_sum = [mx.nd.zeros(1, ctx=c) for c in contexts]
        correct = [mx.nd.zeros(1, ctx=c) for c in contexts]
        counted = [mx.nd.zeros(1, ctx=c) for c in contexts]
        for x, idx in log.bar(batches(images, batch_size, rng, shuffle=shuffle, pad=pad, drop_last=True), steps):
            q = rows(targets, idx)
            xs = [mx.nd.array(p, ctx=c) for p, c in zip(split(x, contexts), contexts, strict=True)]
            qs = [mx.nd.array(p, ctx=c) for p, c in zip(split(q, contexts), contexts, strict=True)]
            with autograd.record():
                outs = [loss_net(xi, qi) for xi, qi in zip(xs, qs, strict=True)]
            autograd.backward([loss for loss, _ in outs])
            trainer.step(batch_size)
            for i, ((loss, log_probs), qi) in enumerate(zip(outs, qs, strict=True)):
                has_target = qi.sum(axis=1) > 0
                loss_sum[i] += loss.sum()
                correct[i] += ((log_probs.argmax(axis=1) == qi.argmax(axis=1)) * has_target).sum()
                counted[i] += has_target.sum()
        total = [sum(float(v.asscalar()) for v in values) for values in (loss_sum, correct, counted)]  # waits
        log.end(*total, trainer.optimizer.num_update, trainer.learning_rate, steps * batch_size,
                lambda x, y: accuracy(model, x, y),
                lambda: {k: v.data(contexts[0]).copy() for k, v in net.collect_params().items()})
        if checkpoint is not None and epoch + 1 < epochs:
            log.keep(checkpoint, lambda: save_checkpoint(checkpoint, net, trainer, rng, log))
    if checkpoint is not None and os.path.exists(checkpoint.path):
        os.remove(checkpoint.path)
    if log.best_state is not None:
        for k, v in net.collect_params().items():
            v.set_data(log.best_state[k])
    return model, log.history
