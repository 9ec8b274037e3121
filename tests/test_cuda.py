"""The torch trainer on a CUDA GPU (skipped without one; bench/gpu_check.py runs this module on a
lent GPU): one step on the GPU from equal weights is the CPU's step within float32 tolerance,
bf16 autocast and channels-last train, and --compile compiles or falls back with one warning.

MBEM_TEST_DEVICE=cpu runs the same code on the CPU against itself, to check the tests' own
logic on a machine without a GPU."""

import os
import warnings

import numpy as np
import pytest
import torch

import resnet_torch
from mbemlib import pipeline

FORCED = os.environ.get("MBEM_TEST_DEVICE") == "cpu"
pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() or FORCED), reason="no CUDA GPU")
GPUS = [] if FORCED else [0]  # --gpus: the first GPU (or the CPU when forced)
CPU = torch.device("cpu")


def one_step(gpus, state, x, q, lr=0.1):
    """One NAG step of ResNet-8 from `state` on the device of `gpus`; the weights after it, on the CPU."""
    model = resnet_torch.build(8, 10, gpus, seed=0)
    model.net.load_state_dict(state)
    model.net.train()
    optimizer = resnet_torch.nag(model.net, lr)
    per_item, _ = resnet_torch.soft_target_loss(model.forward(model.tensor(x)), torch.from_numpy(q).to(model.device))
    per_item.mean().backward()
    optimizer.step()
    return {k: v.detach().to(CPU).numpy() for k, v in model.net.state_dict().items() if v.is_floating_point()}


def test_one_step_on_the_gpu_is_the_cpus_within_float32_tolerance():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (128, 3, 32, 32)).astype(np.float32)
    q = rng.dirichlet(np.ones(10), 128).astype(np.float32)
    state = resnet_torch.build(8, 10, seed=0).net.state_dict()
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # float32, not TF32
    try:
        on_gpu, on_cpu = one_step(GPUS, state, x, q), one_step([], state, x, q)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    for name, value in on_cpu.items():
        scale = max(np.abs(value).max(), 1e-12)
        assert np.abs(on_gpu[name] - value).max() / scale <= 1e-4, name


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_in_channels_last_learns_on_the_gpu(precision):
    """ResNet-8 on 512 images of four colours, 8 epochs: the loss falls, the weights stay channels-last."""
    if precision == "bf16" and not resnet_torch.native_bf16(resnet_torch.to_devices(GPUS)[0]):
        pytest.skip("bf16 is emulated on this device")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 512)
    images = np.clip(rng.normal(60 * labels[:, None, None, None], 20, (512, 3, 16, 16)), 0, 255).astype(np.uint8)
    model, history = resnet_torch.train(images, np.eye(4)[labels], 4, depth=8, epochs=8, batch_size=64, gpus=GPUS,
                                        pad=0, precision=precision, progress=False)
    assert history[-1]["loss"] < history[0]["loss"] / 2 and history[-1]["train_acc"] > 0.9
    conv = model.net.features[0].weight
    assert conv.device.type == ("cpu" if FORCED else "cuda")
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert resnet_torch.accuracy(model, images, labels) > 0.9


def test_compile_compiles_or_falls_back_with_one_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = resnet_torch.build(8, 10, GPUS, seed=0, compile=True)
        probs = resnet_torch.predict_proba(model, np.zeros((40, 3, 16, 16), np.uint8), batch_size=20)
    assert probs.shape == (40, 10) and np.allclose(probs.sum(axis=1), 1.0)
    fell_back = [w for w in caught if "running eagerly" in str(w.message)]
    assert (model.forward is model.net) == bool(fell_back) and len(fell_back) <= 1


def test_learning_rate_schedule_is_the_releases_on_the_gpu():
    _, history = resnet_torch.train(np.zeros((8, 3, 8, 8), np.uint8), np.eye(2)[[0, 1] * 4], 2, depth=8, epochs=6,
                                    batch_size=4, gpus=GPUS, pad=0, progress=False)
    assert [h["lr"] for h in history] == pytest.approx([pipeline.base_lr(4)] * 4 + [0.0004, 0.00004])
