"""The network, its loss and its training: real training steps on small real data."""

import numpy as np
import pytest

mx = pytest.importorskip("mxnet", reason="MXNet is not installed (the torch-only environment)")

import resnet  # noqa: E402


def test_soft_loss_is_cross_entropy_on_one_hot_and_numpy_on_soft():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(8, 5))
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    labels = rng.integers(0, 5, 8)
    one_hot = np.eye(5)[labels]
    mx_loss = resnet.SoftTargetLoss(lambda x: mx.nd.log_softmax(x, axis=-1))
    per_item, _ = mx_loss.hybrid_forward(mx.nd, mx.nd.array(logits), mx.nd.array(one_hot))
    reference = mx.gluon.loss.SoftmaxCrossEntropyLoss()(mx.nd.array(logits), mx.nd.array(labels))
    assert np.allclose(per_item.asnumpy(), reference.asnumpy(), atol=1e-5)
    soft = rng.dirichlet(np.ones(5), size=8)
    per_item, _ = mx_loss.hybrid_forward(mx.nd, mx.nd.array(logits), mx.nd.array(soft))
    assert np.allclose(per_item.asnumpy(), -(soft * log_probs).sum(axis=1), atol=1e-5)  # numpy reference


@pytest.mark.parametrize("depth", [8, 14, 20])
def test_network_shapes_and_depth(depth):
    net = resnet.build(depth, 7, seed=0).net
    out = net(mx.nd.zeros((2, 3, 32, 32)))
    assert out.shape == (2, 7)
    convs = [p for name, p in net.collect_params().items() if "conv" in name and p.shape[-1] == 3]
    assert len(convs) == depth - 1  # 3x3 convolutions: the stem plus two per unit; + dense = depth - 1 + 1
    with pytest.raises(ValueError):
        resnet.ResNet(9, 10)


def test_probabilities_sum_to_one():
    model = resnet.build(8, 10, seed=0)
    images = np.random.default_rng(0).integers(0, 256, (37, 3, 16, 16), dtype=np.uint8)
    probs = resnet.predict_proba(model, images, batch_size=16)
    assert probs.shape == (37, 10) and np.allclose(probs.sum(axis=1), 1.0)


@pytest.mark.slow
def test_small_net_overfits_64_images():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (64, 3, 16, 16), dtype=np.uint8)
    labels = rng.integers(0, 4, 64)
    model, history = resnet.train(images, np.eye(4)[labels], 4, depth=8, epochs=40, batch_size=32, lr=0.05,
                                  pad=0, progress=False)
    assert history[-1]["loss"] < history[0]["loss"] / 3
    assert resnet.accuracy(model, images, labels) > 0.95


def test_devices():
    assert resnet.to_devices(None) == [mx.cpu()] and resnet.to_devices([]) == [mx.cpu()]
    assert resnet.to_devices([0]) == [mx.gpu(0)]
    assert resnet.to_devices([0, 1]) == [mx.gpu(0), mx.gpu(1)]


@pytest.mark.slow
def test_data_parallel_split_path_on_cpu_contexts():
    """The multi-device code path (split batch, one forward per device, summed gradients) with two
    CPU contexts standing in for two GPUs."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (40, 3, 8, 8), dtype=np.uint8)
    parts = resnet.split(images.astype(np.float32), [mx.cpu(0), mx.cpu(1)])
    assert [len(p) for p in parts] == [20, 20]
    net, history = resnet.train(images, np.eye(3)[rng.integers(0, 3, 40)], 3, depth=8, epochs=2, batch_size=20,
                                pad=0, progress=False, devices=[mx.cpu(0), mx.cpu(1)])
    assert len(history) == 2 and np.isfinite(history[-1]["loss"])


def test_select_epoch_needs_its_data():
    images = np.zeros((8, 3, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="val"):
        resnet.train(images, np.eye(2)[np.zeros(8, int)], 2, depth=8, epochs=1, select_epoch="val", progress=False)


def test_a_saved_model_loads_and_predicts_the_same(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (40, 3, 8, 8), dtype=np.uint8)
    model, _ = resnet.train(images, np.eye(3)[rng.integers(0, 3, 40)], 3, depth=8, epochs=1, batch_size=20, pad=0,
                            progress=False)
    path = str(tmp_path / ("cell" + resnet.MODEL_SUFFIX))
    resnet.save_model(model, path, {"classes": ["a", "b", "c"], "depth": 8, "imagenet": False, "in_channels": 3})
    loaded, meta = resnet.load_model(path)
    assert meta["classes"] == ["a", "b", "c"]
    assert np.allclose(resnet.predict_proba(loaded, images), resnet.predict_proba(model, images), atol=1e-6)
