"""The PyTorch trainer against the MXNet one: the same network, the same step, the same learning.

Weights are copied between the frameworks by position: both nets register their parameters in
the same order (input BN, stem, then per unit bn1, bn2, conv1, conv2, projection; final BN,
dense), MXNet's BatchNorm as gamma, beta, running mean, running var and PyTorch's as weight,
bias, running_mean, running_var (num_batches_tracked has no MXNet counterpart).
"""

import numpy as np
import pytest
import torch

mx = pytest.importorskip("mxnet", reason="MXNet is not installed (the torch-only environment)")

import resnet  # noqa: E402
import resnet_torch  # noqa: E402
from mbemlib import pipeline  # noqa: E402
from test_resnet_torch import cifar_subset  # noqa: E402

autograd = mx.autograd


def torch_state(net):
    return [(k, v) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")]


def twin_nets(depth, classes, x, dtype="float32"):
    """An MXNet net and a torch net holding the same weights and BatchNorm statistics."""
    mxnet_net = resnet.ResNet(depth, classes)
    mxnet_net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    mxnet_net.cast(dtype)
    mxnet_net(mx.nd.array(x, dtype=dtype))  # deferred init
    model = resnet_torch.build(depth, classes, seed=0)
    model.net.to(getattr(torch, dtype))
    for (_, m), (_, t) in zip(mxnet_net.collect_params().items(), torch_state(model.net), strict=True):
        t.copy_(torch.from_numpy(m.data().asnumpy()))
    return mxnet_net, model


@pytest.mark.parametrize("depth", [8, 20])
def test_same_parameter_shapes_and_count(depth):
    mxnet_net = resnet.build(depth, 10, seed=0).net
    mxnet_net(mx.nd.zeros((1, 3, 32, 32)))
    mx_shapes = [tuple(p.shape) for p in mxnet_net.collect_params().values()]
    torch_shapes = [tuple(v.shape) for _, v in torch_state(resnet_torch.ResNet(depth, 10))]
    assert mx_shapes == torch_shapes
    learnable = [tuple(p.shape) for p in mxnet_net.collect_params().values() if p.grad_req != "null"]
    assert learnable == [tuple(p.shape) for p in resnet_torch.ResNet(depth, 10).parameters() if p.requires_grad]


def test_same_log_probabilities_in_eval_mode():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 3, 32, 32)).astype(np.float32)
    mxnet_net, model = twin_nets(20, 10, x)
    # Realistic statistics for the input BatchNorm (fresh ones would feed raw 0..255 pixels on).
    for name, value in (("running_mean", 120.0), ("running_var", 4000.0)):
        mxnet_net.features[0].params.get(name).set_data(mx.nd.full((3,), value))
        getattr(model.net.bn_data, name).fill_(value)
    model.net.eval()
    with torch.no_grad():
        torch_log_probs = torch.log_softmax(model.net(torch.from_numpy(x)), 1).numpy()
    assert np.abs(torch_log_probs - mxnet_net(mx.nd.array(x)).asnumpy()).max() <= 1e-4


def one_step(dtype, batch=160, lr=0.1):
    """One training step of each framework from the same weights, batch and soft targets."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (batch, 3, 32, 32)).astype(dtype)
    q = rng.dirichlet(np.ones(10), batch).astype(dtype)
    mxnet_net, model = twin_nets(8, 10, x, dtype)
    trainer = resnet.nag(mxnet_net, lr)
    with autograd.record():
        loss, _ = resnet.SoftTargetLoss(mxnet_net)(mx.nd.array(x, dtype=dtype), mx.nd.array(q, dtype=dtype))
    loss.backward()
    trainer.step(batch)
    optimizer = resnet_torch.nag(model.net, lr)
    model.net.train()
    per_item, _ = resnet_torch.soft_target_loss(model.net(torch.from_numpy(x)), torch.from_numpy(q))
    per_item.mean().backward()
    optimizer.step()
    return [(name, m.data().asnumpy(), t.numpy()) for (name, m), (_, t)
            in zip(mxnet_net.collect_params().items(), torch_state(model.net), strict=True)]


def relative(a, b):
    return np.abs(a - b).max() / max(np.abs(a).max(), 1e-12)


def test_one_training_step_is_the_same_update():
    """Loss, NAG, weight decay and BatchNorm conventions, pinned in float64: in float32 the two
    frameworks' gradients of a fresh net differ by up to 0.5% on some tensors, as much as each
    differs from a float64 reference, so float32 would test rounding rather than conventions.
    The running variance differs by design by n / (n - 1) in the batch's share (PyTorch keeps the
    unbiased batch variance, MXNet the biased one); at n >= 10,240 values per channel that is
    within 1e-4."""
    for name, mx_value, torch_value in one_step("float64"):
        assert relative(mx_value, torch_value) <= (1e-4 if name.endswith("running_var") else 1e-6), name


def test_one_float32_step_moves_the_weights_alike():
    for name, mx_value, torch_value in one_step("float32"):
        if name.endswith("_weight"):
            assert relative(mx_value, torch_value) <= 1e-4, name


def test_weight_decay_covers_weights_and_batchnorm_scales_only():
    decayed_torch = sorted(n for n, p in resnet_torch.ResNet(8, 10).named_parameters()
                           if p.requires_grad and resnet_torch.decayed(n))
    assert all(n.endswith(".weight") for n in decayed_torch)
    assert not any(resnet_torch.decayed(n) for n in ("bn_data.bias", "output.bias", "features.1.bn1.bias"))
    assert resnet.decayed("batchnorm3_gamma") and resnet.decayed("conv2_weight") and resnet.decayed("dense0_weight")
    assert not resnet.decayed("batchnorm3_beta") and not resnet.decayed("dense0_bias")
    groups = resnet_torch.nag(resnet_torch.ResNet(8, 10), 0.1).param_groups
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    assert len(groups[0]["params"]) == len(decayed_torch)


def release_loop_run(backend, images, targets, epochs=1, batch=4, lr=0.2):
    """Train ResNet-8 in the release's loop (no shuffle, no augmentation); the weights that the
    hand computation follows, and the optimizer steps taken."""
    module = resnet_torch if backend == "torch" else resnet
    net, history = module.train(images, targets, 2, depth=8, epochs=epochs, batch_size=batch, lr=lr, pad=0,
                                shuffle=False, progress=False, seed=3)
    return history[-1]["updates"], watched(backend, net)


def watched(backend, net):
    if backend == "torch":
        state = net.net.state_dict()
        return {k: state[k].numpy().copy() for k in ("output.weight", "output.bias", "bn_data.running_mean")}
    params = list(getattr(net, "net", net).collect_params().values())  # Gluon numbers names globally: by position
    return {"output.weight": params[-2].data().asnumpy(), "output.bias": params[-1].data().asnumpy(),
            "bn_data.running_mean": params[2].data().asnumpy()}


def initial(backend, images):
    """The weights train() starts from with seed 3 (the same build, before any step)."""
    if backend == "torch":
        return watched(backend, resnet_torch.build(8, 2, seed=3))
    net = resnet.build(8, 2, seed=3).net
    net(mx.nd.array(images[:1].astype(np.float32)))  # MXNet draws the weights at the first forward
    return watched(backend, net)


@pytest.mark.parametrize("backend", ["torch", "mxnet"])
def test_images_without_targets_give_decay_momentum_and_statistics(backend):
    """--epoch-images all by hand: 4 labelled images then 4 with zero targets, batch 4, no shuffle.
    The second step has no loss gradient: a weight moves by decay and momentum alone, a shift
    (no decay) by momentum alone, and the input BatchNorm's running mean takes the second batch.
    The schedule falls x0.1 after the first of the two updates (2/3 of 2), which shows the one
    difference between the optimizers: PyTorch's SGD (and MXNet's NAG of the release's time)
    keeps an unscaled momentum buffer that the new learning rate multiplies, while mxnet 1.9.1's
    fused nag_mom_update keeps a velocity already scaled by the learning rate of its step."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 3, 8, 8), dtype=np.uint8)
    targets = np.zeros((8, 2))
    targets[np.arange(4), rng.integers(0, 2, 4)] = 1
    w0 = initial(backend, images)
    updates1, w1 = release_loop_run(backend, images[:4], targets[:4])  # one step on the labelled batch
    updates2, w2 = release_loop_run(backend, images, targets)  # that step, then one on zero targets
    assert updates1 == 1 and updates2 == 2
    lr1, lr2 = 0.2, pipeline.learning_rate(0.2, 2, (1, 2))
    assert lr2 == pytest.approx(0.02)
    m, wd = 0.9, 1e-4
    momentum_lr = lr2 if backend == "torch" else lr1
    for name, decay in (("output.weight", wd), ("output.bias", 0.0)):
        buffer = (w0[name] - w1[name]) / (lr1 * (1 + m))  # step 1 moved by lr (1 + m) (g + wd w0)
        step = -lr2 * decay * (1 + m) * w1[name] - momentum_lr * m * m * buffer  # the second step, by hand
        assert np.abs(step).max() > 1e-5  # zero targets still move the weights
        assert np.abs((w2[name] - w1[name]) - step).max() <= 1e-3 * np.abs(step).max(), name
    means = images.reshape(2, 4, 3, -1).astype(np.float64).mean(axis=(1, 3))  # per batch and channel
    assert np.allclose(w1["bn_data.running_mean"], 0.1 * means[0], rtol=1e-5)
    assert np.allclose(w2["bn_data.running_mean"], 0.9 * 0.1 * means[0] + 0.1 * means[1], rtol=1e-5)


@pytest.mark.slow
def test_torch_fp32_and_mxnet_learn_real_cifar_alike():
    """ResNet-8 on 4,000 shared CIFAR JPEGs with clean labels, 4 epochs, the same batches and
    augmentation (pipeline.py, one seed): the two frameworks' test errors agree within 0.03."""
    images, targets, test_images, test_labels = cifar_subset()
    errors = {}
    for name, module in (("torch", resnet_torch), ("mxnet", resnet)):
        net, _ = module.train(images, targets, 10, depth=8, epochs=4, batch_size=100, progress=False)
        errors[name] = 1 - module.accuracy(net, test_images, test_labels)
    assert errors["torch"] < 0.7 and errors["mxnet"] < 0.7  # chance: 0.9
    assert abs(errors["torch"] - errors["mxnet"]) <= 0.03, errors


