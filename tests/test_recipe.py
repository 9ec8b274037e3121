"""The release's training recipe, pinned on both backends against the release's own numbers
(../shared/PAPER.md), and the release-loop settings pinned from the command line to the trainer:
a constant changed on both backends at once, or a flag that stops reaching the trainer, fails here."""

import importlib
import inspect

import numpy as np
import pytest
import torch

import MBEM
import resnet_torch
from conftest import needs_mxnet
from mbemlib import settings

BACKENDS = ["resnet_torch", pytest.param("resnet", marks=needs_mxnet)]  # the trainers' modules


def trainer(name):
    return importlib.import_module(name)


@needs_mxnet
def test_both_trainers_expose_one_contract():
    """MBEM.py calls either trainer the same way: the same functions with the same signatures."""
    resnet = trainer("resnet")
    for name in ("to_devices", "build", "train", "predict_proba", "accuracy", "save_model", "load_model"):
        assert inspect.signature(getattr(resnet, name)) == inspect.signature(getattr(resnet_torch, name)), name


def mxnet_blocks(block):
    yield block
    for child in block._children.values():
        yield from mxnet_blocks(child)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batchnorm_eps_and_momentum_are_the_releases_on_both_backends(backend):
    """BatchNorm(eps=2e-5, momentum=0.9) in MXNet's convention: PyTorch keeps 1 - 0.9 of the batch."""
    if backend == "resnet_torch":
        norms = [m for m in resnet_torch.ResNet(20, 10).modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert len(norms) == 1 + 2 * 9 + 1  # input, two per unit, final
        assert all(m.eps == 2e-5 and m.momentum == pytest.approx(0.1, abs=1e-12) for m in norms)
        return
    resnet = trainer("resnet")
    norms = [b for b in mxnet_blocks(resnet.ResNet(20, 10)) if isinstance(b, resnet.nn.BatchNorm)]
    assert len(norms) == 20
    assert all(b._kwargs["eps"] == 2e-5 and b._kwargs["momentum"] == 0.9 for b in norms)


def standardised_weights(layers):
    """Weights of the layers whose fan-in and fan-out differ, each divided by sqrt(2 / fan_in):
    unit variance under the release's init (Xavier, gaussian, fan-in, magnitude 2); half of it with
    magnitude 1 or, for these layers, on the fan-out."""
    pooled = []
    for w in layers:
        fan_in, fan_out = int(np.prod(w.shape[1:])), int(w.shape[0] * np.prod(w.shape[2:]))
        if fan_in != fan_out:
            pooled.append(w.ravel() / np.sqrt(2 / fan_in))
    return np.concatenate(pooled)


@pytest.mark.parametrize("backend", BACKENDS)
def test_init_is_gaussian_on_the_fan_in_with_magnitude_2(backend):
    if backend == "resnet_torch":
        net = resnet_torch.build(20, 10, seed=0).net
        weights = [p.detach().numpy() for n, p in net.named_parameters() if n.endswith("weight") and p.dim() in (2, 4)]
        assert all((m.bias == 0).all() for m in net.modules() if isinstance(m, torch.nn.Linear))
    else:
        resnet = trainer("resnet")
        net = resnet.build(20, 10, seed=0).net
        net(resnet.mx.nd.zeros((1, 3, 32, 32)))  # MXNet draws the weights at the first forward
        weights = [p.data().asnumpy() for n, p in net.collect_params().items()
                   if n.endswith("_weight") and p.data().ndim in (2, 4)]
    z = standardised_weights(weights)
    assert len(z) > 20000  # the stem, the strided convolutions and projections, the dense layer
    assert abs(z.mean()) < 0.03 and 0.95 < z.var() < 1.05


@pytest.mark.parametrize("backend", BACKENDS)
def test_learning_rate_is_linear_in_the_batch_and_falls_at_two_thirds_and_five_sixths(backend):
    """8 images, batch 4: 2 updates an epoch, 12 in 6 epochs; the rate starts at 0.5 x 4 / 500 and
    falls x0.1 after update 8 (2/3) and 10 (5/6). Each record holds its last update's rate."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 3, 8, 8), dtype=np.uint8)
    _, history = trainer(backend).train(images, np.eye(2)[rng.integers(0, 2, 8)], 2, depth=8, epochs=6,
                                        batch_size=4, pad=0, progress=False)
    assert [h["updates"] for h in history] == [2, 4, 6, 8, 10, 12]
    assert [h["lr"] for h in history] == pytest.approx([0.004] * 4 + [0.0004, 0.00004])


class RecordingTrainer:
    """A trainer that records what MBEM.py asks of it and predicts uniform probabilities."""

    def __init__(self):
        self.trained, self.predicted = [], []

    def train(self, images, targets, classes, **options):
        self.trained.append({"images": len(images), "targets": np.array(targets), **options})
        return "model", [{"epoch": 1, "img_per_s": 1.0}]

    def predict_proba(self, model, images, batch_size=500, pad=0, rng=None, columns=None):
        self.predicted.append({"images": len(images), "pad": pad, "rng": rng})
        return np.full((len(images), 10), 0.1)


@pytest.mark.parametrize("flags", [[], ["--epoch-images", "all", "--no-shuffle", "--predict-augmented"]])
def test_release_loop_flags_reach_the_trainer(flags):
    config, _, _ = settings.parse(["--preset", "smoke", "--backend", "torch", "--epochs", "1", "--no-two-stage",
                                   *flags])
    experiment = MBEM.Experiment(config, MBEM.load_images(config))
    experiment.trainer = recorder = RecordingTrainer()
    items = experiment.pool[:100]
    experiment.fit(np.eye(10)[experiment.ds.train_labels[items]], items, 0, "t")
    (trained,), (on_items, on_test) = recorder.trained, recorder.predicted
    release = bool(flags)
    assert trained["images"] == (len(experiment.pool) if release else 100)  # --epoch-images all: the whole pool
    assert trained["targets"][:100].sum() == 100 and trained["targets"][100:].sum() == 0  # the rest pass through
    assert trained["shuffle"] is not release  # --no-shuffle
    assert on_items["images"] == 100 and on_test["images"] == len(experiment.ds.test_images)
    assert (on_items["pad"], on_items["rng"] is not None) == ((config.augment_pad, True) if release else (0, False))
    assert on_test["pad"] == 0  # the test set is never augmented
