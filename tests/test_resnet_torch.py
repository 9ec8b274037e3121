"""The PyTorch trainer on its own: augmented predictions, bf16, precision, devices, compilation,
and bf16 against fp32 on real CIFAR images (tests against MXNet: test_backends_agree.py)."""

import functools

import numpy as np
import pytest
import torch

import resnet_torch
from conftest import shared_path
from mbemlib import dataset

CPU = torch.device("cpu")


def calibrated(model):
    """A fresh net whose input BatchNorm has pixel statistics (else eval mode saturates the softmax)."""
    model.net.bn_data.running_mean.fill_(120.0)
    model.net.bn_data.running_var.fill_(4000.0)
    return model


def test_predictions_on_augmented_images_differ_but_stay_probabilities():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 3, 16, 16), dtype=np.uint8)
    model = calibrated(resnet_torch.build(8, 5, seed=0))
    plain = resnet_torch.predict_proba(model, images, batch_size=32)
    augmented = resnet_torch.predict_proba(model, images, batch_size=32, pad=4, rng=np.random.default_rng(1))
    assert np.allclose(augmented.sum(axis=1), 1.0) and not np.allclose(plain, augmented)
    assert np.allclose(plain, resnet_torch.predict_proba(model, images, batch_size=32))


def test_bf16_forward_tracks_fp32():
    """bf16 autocast runs the same network (emulated on CPUs without native bf16, so kept tiny)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 3, 16, 16), dtype=np.uint8)
    model = calibrated(resnet_torch.build(8, 5, seed=0))
    fp32 = resnet_torch.predict_proba(model, images, batch_size=20)
    model.precision = "bf16"
    bf16 = resnet_torch.predict_proba(model, images, batch_size=20)
    assert np.abs(fp32 - bf16).max() < 0.05 and (fp32.argmax(1) == bf16.argmax(1)).mean() > 0.8


def test_precision_resolution():
    assert resnet_torch.resolve_precision("fp32") == "fp32"
    native = resnet_torch.native_bf16(CPU)
    assert resnet_torch.resolve_precision("auto") == ("bf16" if native else "fp32")
    if native:
        assert resnet_torch.resolve_precision("bf16") == "bf16"
    else:
        with pytest.raises(ValueError, match="no native bf16"):
            resnet_torch.resolve_precision("bf16")


def test_devices():
    assert resnet_torch.to_devices(None) == [CPU] and resnet_torch.to_devices([]) == [CPU]
    assert resnet_torch.to_devices([0, 1]) == [torch.device("cuda", 0), torch.device("cuda", 1)]
    with pytest.raises(ValueError, match="torchrun --nproc_per_node 2"):
        resnet_torch.this_device(resnet_torch.to_devices([0, 1]))


@pytest.mark.slow
def test_compiled_network_trains_and_predicts():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (96, 3, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 3, 96)
    model, history = resnet_torch.train(images, np.eye(3)[labels], 3, depth=8, epochs=2, batch_size=32, pad=0,
                                        compile=True, progress=False)
    probs = resnet_torch.predict_proba(model, images[:50], batch_size=32)  # a short last batch: padded
    assert model.forward is not model.net and probs.shape == (50, 3) and np.isfinite(history[-1]["loss"])


@functools.cache  # two tests share it: decode the archive once
def cifar_subset():
    """4,000 shared CIFAR training JPEGs with clean labels, 2,000 test images (seeded picks)."""
    ds = dataset.load_folder(shared_path("cifar10-jpeg.tar.gz"), progress=False)
    pick = np.random.default_rng(0).permutation(len(ds.train_images))[:4000]
    test = np.random.default_rng(1).permutation(len(ds.test_images))[:2000]
    return (ds.train_images[pick], np.eye(10)[ds.train_labels[pick]], ds.test_images[test],
            ds.test_labels[test])


@pytest.mark.slow
@pytest.mark.skipif(not resnet_torch.native_bf16(CPU), reason="bf16 is emulated on this CPU (no AVX512-BF16 or AMX)")
def test_bf16_and_fp32_learn_real_cifar_alike():
    """The same run as above in torch fp32 and bf16 autocast: test errors within 0.03, so that
    `--precision auto` picking bf16 on one machine and fp32 on another is a speed choice only."""
    images, targets, test_images, test_labels = cifar_subset()
    errors = {}
    for precision in ("fp32", "bf16"):
        model, _ = resnet_torch.train(images, targets, 10, depth=8, epochs=4, batch_size=100, precision=precision,
                                      progress=False)
        errors[precision] = 1 - resnet_torch.accuracy(model, test_images, test_labels)
    assert errors["bf16"] < 0.7  # chance: 0.9
    assert abs(errors["bf16"] - errors["fp32"]) <= 0.03, errors

