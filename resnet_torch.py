"""The release's pre-activation ResNet in PyTorch, trained exactly as resnet.py trains it in MXNet
(the same contract: to_devices, build, train, predict_proba, accuracy), plus bf16 and compilation.

Network, loss and training are resnet.py's, the recipe read from mbemlib/pipeline.py, in MXNet's
conventions where PyTorch's differ:
- BatchNorm eps 2e-5; MXNet's momentum 0.9 (the share kept of the running value) is PyTorch's
  momentum 0.1 (the share taken from the batch);
- the input BatchNorm has a fixed scale of 1 and a learnable shift (MXNet's fix_gamma=True);
- Xavier init: gaussian, std sqrt(2 / fan_in), for convolution and dense weights; zero bias;
- NAG: MXNet's `state = 0.9 state + g + wd w; w -= lr (g + wd w + 0.9 state)` is PyTorch's SGD
  with nesterov=True (its first step sets the buffer to the gradient, as MXNet's zero state does);
- weight decay 1e-4 on weights only: convolution and dense weights and BatchNorm scales, as the
  release's MXNet optimizer decays names ending in _weight or _gamma (pipeline.decayed);
- the learning rate falls x0.1 after 2/3 and 5/6 of the updates, counted in steps as MXNet's
  MultiFactorScheduler counts them.
Tests check one training step against MXNet from equal weights.

Speed (bench/bench_train.py measures each):
- bf16 autocast (--precision bf16): convolutions run on this CPU's AMX units; the loss and
  softmax stay fp32;
- channels-last memory: oneDNN's native layout, no transposes around every convolution;
- torch.compile (inductor) fuses BatchNorm, ReLU and the additions into few kernels; one
  batch shape in training (only full batches) and one in evaluation (the last batch is padded)
  so it compiles twice per model, not per shape;
- the numpy pipeline (mbemlib/pipeline.py) prepares the next batch in a background thread.

Several GPUs: one process per GPU under torchrun, DistributedDataParallel (MBEM.py starts the
process group). Every process draws the same global batch and trains on its slice of it, so the
run is the single-process one with the batch split across devices.
"""

import copy
import functools
import os
import pickle
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812 (the universal spelling)
from torch import nn

from mbemlib.atomic import replacing
from mbemlib.crowd_methods import crowd_loss
from mbemlib.pipeline import (
    BN_EPS,
    BN_MOMENTUM,
    DROPS,
    MOMENTUM,
    WEIGHT_DECAY,
    Epochs,
    base_lr,
    batches,
    decayed,
    gather,
    init_std,
    learning_rate,
    rows,
    stages,
    update_steps,
)

BN = {"eps": BN_EPS, "momentum": round(1 - BN_MOMENTUM, 12)}  # PyTorch's momentum is the share of the batch


def to_devices(gpus):
    """--gpus ids ([] or None: the CPU) as torch devices."""
    return [torch.device("cuda", i) for i in gpus] if gpus else [torch.device("cpu")]


def native_bf16(device):
    """Whether `device` computes bf16 natively: a CUDA GPU that supports it, or a CPU whose oneDNN
    reports bf16 (AVX512-BF16 or AMX). Elsewhere bf16 is emulated, many times slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check is not None and check())


def resolve_precision(precision, gpus=None):
    """'fp32' or 'bf16' for --precision fp32/bf16/auto on the first of --gpus (auto: bf16 where native)."""
    device = to_devices(gpus)[0]
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and not native_bf16(device):
        what = f"this CPU ({cpu_capability()}) has" if device.type == "cpu" else f"{device} has"
        raise ValueError(f"--precision bf16: {what} no native bf16 (bf16 needs AVX512-BF16 or AMX, or a GPU that "
                         "computes it) and would run many times slower; use fp32 or auto")
    return precision


def cpu_capability():
    return getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()  # PyTorch 2.1 and later


def distributed():
    """(rank, world size): (0, 1) unless a torchrun process group is up."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def join_processes(gpus):
    """This process's rank: 0 alone, or its rank in the process group when started by torchrun
    (one process per GPU, or several on the CPU with gloo for a test)."""
    if gpus:
        torch.cuda.set_device(gpus[int(os.environ.get("LOCAL_RANK", 0)) % len(gpus)])
    dist.init_process_group("nccl" if gpus else "gloo")
    if not gpus:  # CPU processes share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.get_world_size()))
    return dist.get_rank()


def this_device(devices):
    """The device of this process: the only one, or under torchrun the local rank's GPU."""
    rank, world = distributed()
    if world == 1 and len(devices) > 1:
        raise ValueError(f"several GPUs on the torch backend run one process each: torchrun --nproc_per_node "
                         f"{len(devices)} MBEM.py ... --gpus {','.join(str(d.index) for d in devices)}")
    if world > 1 and devices[0].type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank))
        if len(devices) != world:
            raise ValueError(f"--gpus names {len(devices)} GPUs but torchrun started {world} processes")
        return devices[local]
    return devices[0]


class Unit(nn.Module):
    """Pre-activation basic unit: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the shortcut. The
    projection (1x1, strided) reads the pre-activated input, as the release does."""

    def __init__(self, in_channels, channels, stride, project):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(in_channels, **BN), nn.BatchNorm2d(channels, **BN)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.project = nn.Conv2d(in_channels, channels, 1, stride, bias=False) if project else None

    def forward(self, x):
        act = F.relu(self.bn1(x))
        shortcut = self.project(act) if self.project is not None else x
        return self.conv2(F.relu(self.bn2(self.conv1(act)))) + shortcut


class ResNet(nn.Module):
    """Pre-activation ResNet returning logits (batch x classes): CIFAR's depth 6n + 2, or with
    imagenet=True ResNet-18/34 (resnet.ResNet, the same layers in the same order)."""

    def __init__(self, depth, classes, in_channels=3, imagenet=False):
        super().__init__()
        units, filters = stages(depth, imagenet)
        self.bn_data = nn.BatchNorm2d(in_channels, **BN)
        self.bn_data.weight.requires_grad_(False)  # fixed scale 1, learnable shift (the release's fix_gamma)
        if imagenet:
            layers = [nn.Conv2d(in_channels, filters[0], 7, 2, 3, bias=False), nn.BatchNorm2d(filters[0], **BN),
                      nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        else:
            layers = [nn.Conv2d(in_channels, filters[0], 3, 1, 1, bias=False)]
        channels = filters[0]
        for stage, (count, width) in enumerate(zip(units, filters, strict=True)):
            for unit in range(count):
                layers.append(Unit(channels, width, 2 if stage and not unit else 1, project=unit == 0))
                channels = width
        self.features = nn.Sequential(*layers, nn.BatchNorm2d(channels, **BN), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.output = nn.Linear(channels, classes)

    def forward(self, x):
        return self.output(self.features(self.bn_data(x)))


def xavier_(net):
    """The release's init (MXNet Xavier, gaussian, on the fan-in): pipeline.init_std; zero bias."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.normal_(module.weight, 0.0, init_std(module.weight[0].numel()))
            if module.bias is not None:
                nn.init.zeros_(module.bias)


@dataclass
class Model:
    """A trained network and how to run it: `forward` is the module or its compiled form."""

    net: nn.Module
    forward: object
    device: torch.device
    precision: str

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def tensor(self, x):
        return torch.from_numpy(x).to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)


def build(depth, classes, gpus=None, seed=0, imagenet=False, precision="fp32", compile=False, devices=None,
          in_channels=3):
    """A fresh ResNet with the release's init, channels-last on this process's device, compiled if asked."""
    device = this_device(devices or to_devices(gpus))
    torch.manual_seed(seed)
    net = ResNet(depth, classes, in_channels, imagenet)
    xavier_(net)
    net = net.to(device, memory_format=torch.channels_last)
    forward = net
    if compile:
        try:
            forward = torch.compile(net, dynamic=False)
        except Exception as err:  # noqa: BLE001 (any failure to compile falls back to eager, once, loudly)
            warnings.warn(f"torch.compile is unavailable here ({err}); running eagerly", stacklevel=2)
    return Model(net, forward, device, precision)


MODEL_SUFFIX = ".pt"


def save_model(model, path, meta):
    """The network's weights and `meta` (classes, depth, imagenet, in_channels, ...) in one file,
    written whole or not at all."""
    state = {k: v.detach().cpu() for k, v in model.net.state_dict().items()}
    with replacing(path) as tmp:
        torch.save({"state": state, "meta": dict(meta)}, tmp)


def save_checkpoint(checkpoint, state):
    os.makedirs(os.path.dirname(os.path.abspath(checkpoint.path)), exist_ok=True)
    with replacing(checkpoint.path) as tmp:
        torch.save(dict(state, key=checkpoint.key), tmp)


def load_checkpoint(checkpoint):
    """The state a checkpoint file holds for this very training, or None (no file, an unreadable
    one, or another training's: then it trains from the start and the file is overwritten)."""
    try:  # the run's own file, holding optimizer and random states as well as tensors
        saved = torch.load(checkpoint.path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        return None
    return saved if isinstance(saved, dict) and saved.get("key") == checkpoint.key else None


def load_model(path, gpus=None):
    """(Model, meta) from save_model's file, on the CPU or the first of `gpus`: predict_proba(model,
    images) gives the class probabilities, columns in the order of meta["classes"]."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    meta = saved["meta"]
    model = build(meta["depth"], len(meta["classes"]), gpus, imagenet=meta["imagenet"],
                  precision=meta.get("precision", "fp32"), in_channels=meta["in_channels"])
    model.net.load_state_dict(saved["state"])
    return model, meta


def predict_proba(model, images, batch_size=500, pad=0, rng=None, columns=None):
    """Class probabilities (n, K) for uint8 images (or an image stream), in batches; rows sum to 1.
    With pad > 0 each image is augmented once first (the release predicts through its training
    iterator). columns(idx) -> (B, g) keeps only those classes of each row (the grouped form). The
    last batch is padded to full size so a compiled network sees one shape."""
    model.net.eval()
    out = []
    with torch.no_grad(), model.autocast():
        for x, idx in batches(images, batch_size, rng, pad=pad):
            short = len(x)
            if short < batch_size and len(images) >= batch_size:
                x = np.concatenate([x, np.zeros((batch_size - short, *x.shape[1:]), np.float32)])
            logits = model.forward(model.tensor(x))[:short]
            probs = torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float64)
            out.append(gather(probs, idx, columns))
    return np.concatenate(out)


def accuracy(model, images, labels, batch_size=500):
    return float((predict_proba(model, images, batch_size).argmax(axis=1) == labels).mean())


def soft_target_loss(logits, targets):
    """Per-item loss -sum_k q_k log p_k and the log-probabilities, in fp32 whatever the logits."""
    log_probs = F.log_softmax(logits.float(), dim=1)
    return -(targets * log_probs).sum(dim=1), log_probs


def nag(net, lr):
    """The release's optimizer: NAG with weight decay on the `decayed` parameters only."""
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    return torch.optim.SGD([{"params": [p for n, p in named if decayed(n)], "weight_decay": WEIGHT_DECAY},
                            {"params": [p for n, p in named if not decayed(n)], "weight_decay": 0.0}],
                           lr=lr, momentum=MOMENTUM, nesterov=True)


def train(images, targets, classes, depth=20, epochs=60, batch_size=500, lr=None, gpus=None, seed=0,
          select_epoch="last", val=None, test=None, pad=4, shuffle=True, precision="fp32", compile=False,
          progress=True, desc="train", devices=None, imagenet=False, milestones=DROPS, crowd=None, checkpoint=None,
          epoch_log=None):
    """Train the release's ResNet on soft targets (n x K rows summing to 1, or to 0 for an image that
    only passes through: no gradient, but BatchNorm statistics, weight decay and momentum). The
    arguments are resnet.train's; precision 'bf16' autocasts, compile runs torch.compile. crowd =
    (head, workers, labels) trains end to end on every label instead (Crowd Layer, CoNAL:
    mbemlib/crowd_methods.py): the head maps the network's output to each worker's answer, and
    workers and labels (n x slots, -1 for none) give each image's labels; the targets then only
    count the training accuracy; the head's `optimizer` "release" (the default) keeps the network
    on the release's NAG schedule and trains the head with Adam at its LR, "authors" trains both
    with Adam at the head's LR, constant, as the methods' authors do. checkpoint (a pipeline.Checkpoint) keeps the
    whole state after each epoch and resumes from it: the weights, both optimizers, the epoch's
    random states and the record, so that a resumed training ends bit for bit where an uninterrupted
    one does (on the CPU; on a GPU as far as its kernels are deterministic). epoch_log (a
    pipeline.EpochLog) takes the per-epoch lines (else the screen). Returns (model, history),
    history as pipeline.Epochs keeps it."""
    rank, world = distributed()
    if crowd is not None and world > 1:
        raise ValueError("a crowd head trains in one process (its matrices are not synchronised across GPUs)")
    batch_size = min(batch_size, len(images))
    if batch_size % world:
        raise ValueError(f"batch size {batch_size} does not split evenly over {world} processes")
    lr = base_lr(batch_size, imagenet) if lr is None else lr
    rng = np.random.default_rng(seed)
    model = build(depth, classes, gpus, seed, imagenet, precision, compile, devices, images.shape[1])
    net, device = model.net, model.device
    trained = net if world == 1 else nn.parallel.DistributedDataParallel(net, device_ids=None if device.type == "cpu"
                                                                         else [device])
    step_fn = model.forward if world == 1 else trained  # DDP runs the eager module (compiled DDP is a later step)
    optimizer, head, head_optimizer, scheduled = nag(net, lr), None, None, True
    if crowd is not None:
        head = crowd[0].to(device)
        image = getattr(head, "omega_input", "features") == "image"  # CoNAL's omega may read the flattened image
        embedding = int(np.prod(images.shape[1:])) if image else net.output.in_features
        with torch.no_grad():  # one pass materialises lazy layers (crowd-kit's CoNAL) before Adam takes them
            head(torch.zeros(1, classes, device=device), torch.zeros(1, embedding, device=device),
                 torch.zeros(1, 1, dtype=torch.long, device=device))
        if getattr(head, "optimizer", "release") == "authors":  # everything with Adam at the authors' rate
            optimizer, scheduled = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=head.LR), False
        else:  # the crowd matrices learn as their papers train them (Adam, the head's LR); the network keeps NAG
            head_optimizer = torch.optim.Adam(head.parameters(), lr=head.LR)
    steps = len(images) // batch_size
    drops = update_steps(steps * epochs, milestones)
    log = Epochs(select_epoch, val, test, desc, epochs, progress and not rank, epoch_log if not rank else None)
    local = slice(rank * batch_size // world, (rank + 1) * batch_size // world)
    update, first = 0, 0
    saved = load_checkpoint(checkpoint) if checkpoint is not None else None
    if saved is None and checkpoint is not None and os.path.exists(checkpoint.path):
        log.not_resumed(checkpoint)
    if saved is not None:
        net.load_state_dict(saved["net"])
        optimizer.load_state_dict(saved["optimizer"])
        if head is not None:
            head.load_state_dict(saved["head"])
        if head_optimizer is not None:
            head_optimizer.load_state_dict(saved["head_optimizer"])
        rng.bit_generator.state, update, first = saved["rng"], saved["update"], len(saved["log"]["history"])
        torch.set_rng_state(saved["torch_rng"])
        log.restore(saved["log"], checkpoint.path)
    for epoch in range(first, epochs):
        net.train()
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, rows with a target
        for x, idx in log.bar(batches(images, batch_size, rng, shuffle=shuffle, pad=pad, drop_last=True), steps):
            update += 1
            for group in optimizer.param_groups if scheduled else ():
                group["lr"] = learning_rate(lr, update, drops)
            x, q = model.tensor(x[local]), torch.from_numpy(rows(targets, idx[local])).to(device)
            if head is None:
                with model.autocast():
                    logits = step_fn(x)
                per_item, log_probs = soft_target_loss(logits, q)
            else:  # the network's parts, for the pooled features CoNAL reads
                with model.autocast():
                    features = net.features(net.bn_data(x))
                    logits = net.output(features)
                workers, labels = (torch.from_numpy(a[idx[local]]).to(device) for a in crowd[1:])
                per_item = crowd_loss(head, logits, x.float().flatten(1) if image else features, workers, labels)
                log_probs = F.log_softmax(logits.float(), dim=1)
            for each in (optimizer, head_optimizer) if head_optimizer else (optimizer,):
                each.zero_grad(set_to_none=True)
            per_item.mean().backward()
            for each in (optimizer, head_optimizer) if head_optimizer else (optimizer,):
                each.step()
            with torch.no_grad():
                has_target = q.sum(dim=1) > 0
                totals += torch.stack([per_item.sum(), ((log_probs.argmax(1) == q.argmax(1)) & has_target).sum(),
                                       has_target.sum()]).double()
        if world > 1:
            dist.all_reduce(totals)
        loss_sum, correct, seen = totals.tolist()  # the epoch's one sync
        if world > 1:  # one set of BatchNorm statistics for evaluation: rank 0's
            for buffer in net.buffers():
                dist.broadcast(buffer, 0)
        rate = learning_rate(lr, update, drops) if scheduled else head.LR
        log.end(loss_sum, correct, seen, update, rate, steps * batch_size,
                lambda x, y: accuracy(model, x, y), lambda: copy.deepcopy(net.state_dict()))
        if checkpoint is not None and rank == 0 and epoch + 1 < epochs:
            state = {"net": net.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng.bit_generator.state,
                     "torch_rng": torch.get_rng_state(), "update": update, "log": log.state(),
                     **({"head": head.state_dict()} if head else {}),
                     **({"head_optimizer": head_optimizer.state_dict()} if head_optimizer else {})}
            log.keep(checkpoint, functools.partial(save_checkpoint, checkpoint, state))
    if checkpoint is not None and rank == 0 and os.path.exists(checkpoint.path):
        os.remove(checkpoint.path)
    if log.best_state is not None:
        net.load_state_dict(log.best_state)
    if world > 1:
        for buffer in net.buffers():
            dist.broadcast(buffer, 0)
    return model, log.history
