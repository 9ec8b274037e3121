"""The field's methods beside MBEM (crowd_methods.py): CROWDLAB's consensus, the Crowd Layer and
CoNAL heads against crowd-kit and their papers, the trainer's end-to-end path, the refusals."""

import json
from importlib.util import find_spec
from types import SimpleNamespace

import numpy as np
import pytest

import MBEM
from conftest import run_script
from mbemlib import aggregation as agg
from mbemlib import settings

torch = pytest.importorskip("torch")
needs_cleanlab = pytest.mark.skipif(find_spec("cleanlab") is None,
                                    reason="cleanlab is optional: pip install -r requirements-extra.txt")
needs_crowdkit = pytest.mark.skipif(find_spec("crowdkit") is None,
                                    reason="crowd-kit is optional: pip install -r requirements-extra.txt")

from mbemlib import crowd_methods  # noqa: E402 (after torch's skip)


def annotations(triples, n, m, K):
    items, workers, labels = np.array(triples).T
    return agg.Annotations(items, workers, labels, n, m, K)


def test_padded_gives_each_item_its_labels_in_rows():
    ann = annotations([(0, 2, 1), (1, 0, 0), (0, 1, 2), (2, 3, 1), (0, 3, 0)], n=4, m=5, K=3)
    workers, labels = crowd_methods.padded(ann)
    assert workers.tolist() == [[2, 1, 3], [0, -1, -1], [3, -1, -1], [-1, -1, -1]]
    assert labels.tolist() == [[1, 2, 0], [0, -1, -1], [1, -1, -1], [-1, -1, -1]]


# ----------------------------------------------------------------------------- CROWDLAB

@needs_cleanlab
def test_crowdlab_consensus_on_a_hand_made_case():
    """Workers 0 and 1 agree with each other and the model; worker 2 disagrees with everyone; worker
    3 gave no label. Item 4's two labels tie (0 vs 2) and the model, sure of 2, breaks the tie."""
    K, truth = 3, [0, 1, 2, 0, 2, 1]
    triples = [(i, a, t) for i, t in enumerate(truth) if i != 4 for a in (0, 1)]
    triples += [(i, 2, (t + 1) % K) for i, t in enumerate(truth)]
    triples += [(4, 0, 2)]
    ann = annotations(triples, n=6, m=4, K=K)
    probs = np.full((6, K), 0.05)
    probs[np.arange(6), truth] = 0.9
    targets, quality = crowd_methods.crowdlab(ann, probs)
    assert targets.argmax(axis=1).tolist() == truth and targets.sum(axis=1).tolist() == [1.0] * 6
    assert np.isnan(quality[3]) and quality[2] < min(quality[0], quality[1])


@needs_cleanlab
def test_crowdlab_refuses_singly_labelled_items():
    ann = annotations([(0, 0, 1), (1, 1, 0), (2, 0, 1)], n=3, m=2, K=2)
    with pytest.raises(ValueError, match="two labels or more"):
        crowd_methods.crowdlab(ann, np.full((3, 2), 0.5))


# ----------------------------------------------------------------------------- the heads

def batch(K=4, m=5, items=6, slots=2, features=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(items, K, generator=g), torch.randn(items, features, generator=g),
            torch.randint(0, m, (items, slots), generator=g), torch.randint(0, K, (items, slots), generator=g))


@needs_crowdkit
def test_crowd_layer_is_crowdkits_layer_on_the_softmax_output():
    from crowdkit.learning import CrowdLayer

    logits, features, workers, _ = batch()
    head = crowd_methods.CrowdLayerHead(4, 5)
    with torch.no_grad():
        head.layer.weight.add_(0.3 * torch.randn(5, 4, 4, generator=torch.Generator().manual_seed(1)))
    out = head(logits, features, workers)
    p = torch.softmax(logits, dim=1)
    by_hand = torch.einsum("isab,ib->isa", head.layer.weight[workers], p)  # W_a p, per (item, slot)
    assert torch.allclose(out, by_hand, atol=1e-6)
    library = CrowdLayer(4, 5, conn_type="mw")
    library.weight.data.copy_(head.layer.weight.data)
    assert torch.allclose(out[:, 0], library(p, workers[:, 0]), atol=1e-6)
    # its confusions: worker a answers l for class k (p = e_k) with softmax over l of W_a[l, k]
    confusion = head.confusions()
    onehot_answer = torch.softmax(head.layer.weight[2] @ torch.eye(4)[1], dim=0).detach().double().numpy()
    assert np.allclose(confusion[2, 1], onehot_answer) and np.allclose(confusion.sum(axis=2), 1)


@needs_crowdkit
def test_conal_follows_its_authors_and_departs_from_crowdkits_forward():
    logits, features, workers, labels = batch()
    head = crowd_methods.ConalHead(4, 5)
    out = head(logits, features, workers)  # materialises crowd-kit's lazy layer
    conal = head.conal
    p = torch.softmax(logits, dim=1)
    flat = workers.flatten()
    omega = conal.simple_common_module(features.repeat_interleave(2, dim=0), flat).view(6, 2, 1)
    own = torch.stack([p[i] @ conal.annotator_confusion_matrices[workers[i, s]] for i in range(6) for s in range(2)])
    by_hand = omega * (p @ conal.common_confusion_matrix)[:, None] + (1 - omega) * own.view(6, 2, 4)
    assert torch.allclose(out, by_hand, atol=1e-6)
    library = conal(features, logits, workers[:, 0])  # log of normalised worker matrices mixed with raw scores
    assert not torch.allclose(out[:, 0], library, atol=1e-2)
    # the separation term: zero at the start (every matrix 2 I), its gradient finite, then -1e-5 sum ||W_a - W_c||
    loss = crowd_methods.crowd_loss(head, logits, features, workers, labels)
    loss.sum().backward()
    assert all(torch.isfinite(q.grad).all() for q in head.parameters() if q.grad is not None)
    with torch.no_grad():
        conal.annotator_confusion_matrices[1, 0, 0] += 3.0
    assert head.penalty().item() == pytest.approx(-3e-5)
    head.separation = 2e-5  # --conal-separation
    assert head.penalty().item() == pytest.approx(-6e-5)
    head.separation = 0.0
    assert head.penalty().item() == 0.0
    head.separation = crowd_methods.CONAL_SEPARATION
    with torch.no_grad():  # the batch's mean loss carries the penalty once, as the authors add it
        with_penalty = crowd_methods.crowd_loss(head, logits, features, workers, labels).mean()
        head.penalty = lambda: torch.zeros(())
        without = crowd_methods.crowd_loss(head, logits, features, workers, labels).mean()
    assert (with_penalty - without).item() == pytest.approx(-3e-5, abs=1e-6)  # not divided by the batch


class LogitsHead(torch.nn.Module):
    """A crowd head that passes the logits through for every worker: training through it must be
    plain training on the labels themselves."""

    LR = 1e-3

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, logits, features, workers):
        return logits[:, None].expand(-1, workers.shape[1], -1)

    def penalty(self):
        return torch.zeros(())


@pytest.mark.parametrize("slots", [1, 2])
def test_training_through_a_pass_through_head_is_plain_training(slots):
    """One update of the end-to-end path equals one update on the labels as one-hot targets (each
    item's labels averaged), from equal weights: labels reach the loss, missing ones are masked."""
    import resnet_torch

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 3, 8, 8), dtype=np.uint8)
    labels = np.full((8, slots), -1)
    labels[:, 0] = rng.integers(0, 3, 8)
    if slots == 2:
        labels[:4, 1] = labels[:4, 0]  # two equal labels on half the items: the same target
    targets = np.eye(3)[labels[:, 0]]
    options = dict(depth=8, epochs=1, batch_size=8, lr=0.1, pad=0, shuffle=False, progress=False)
    plain, _ = resnet_torch.train(images, targets, 3, **options)
    crowd, _ = resnet_torch.train(images, targets, 3, crowd=(LogitsHead(), np.zeros_like(labels), labels),
                                  **options)
    for a, b in zip(plain.net.state_dict().values(), crowd.net.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_the_authors_optimizer_is_adam_over_network_and_head_at_a_constant_rate(monkeypatch):
    """A head's optimizer "authors" (--crowdlayer-optimizer, --conal-optimizer): one Adam over every
    parameter of the network and the head, at the head's rate, never dropped; "release": NAG on the
    network's schedule, Adam on the head alone."""
    import resnet_torch

    made = []

    class Recording(torch.optim.Adam):
        def __init__(self, params, lr):
            params = list(params)
            made.append(({id(p) for p in params}, lr))
            super().__init__(params, lr=lr)

    monkeypatch.setattr(resnet_torch.torch.optim, "Adam", Recording)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 3, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 3, (8, 1))
    options = dict(depth=8, epochs=6, batch_size=4, lr=0.1, pad=0, progress=False)
    for choice in ("authors", "release"):
        made.clear()
        head = LogitsHead()
        head.optimizer = choice
        model, history = resnet_torch.train(images, np.eye(3)[labels[:, 0]], 3, crowd=(head, np.zeros_like(labels),
                                            labels), **options)
        everything = {id(p) for p in model.net.parameters()} | {id(head.unused)}
        if choice == "authors":
            assert made == [(everything, head.LR)]
            assert [h["lr"] for h in history] == [head.LR] * 6  # the release's drops at 2/3 and 5/6 do not apply
        else:
            assert made == [({id(head.unused)}, head.LR)]
            assert history[0]["lr"] == 0.1 and history[-1]["lr"] == pytest.approx(0.001)


@needs_crowdkit
def test_conals_layers_are_drawn_from_the_cells_seed():
    """Two heads of one seed are one head (torch's global generator, seeded at random in each
    process, is neither used nor moved); another seed draws other omega layers. The lazy first
    layer is drawn at the trainer's first pass, after it seeds torch with the cell's seed."""
    state = torch.random.get_rng_state()
    first, again, other = (crowd_methods.ConalHead(3, 4, seed=s).state_dict() for s in (1, 1, 2))
    assert torch.equal(torch.random.get_rng_state(), state)
    drawn = [k for k, v in first.items() if not isinstance(v, torch.nn.parameter.UninitializedParameter)]
    assert "conal.diff_linear_2.weight" in drawn and all(torch.equal(first[k], again[k]) for k in drawn)
    assert not torch.equal(first["conal.user_feature_1.weight"], other["conal.user_feature_1.weight"])


@needs_crowdkit
def test_a_conal_training_is_the_same_every_time():
    import resnet_torch

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 3, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 3, (8, 2))
    runs = []
    for _ in range(2):
        torch.manual_seed(int(rng.integers(1 << 30)))  # whatever state the process is in
        head = crowd_methods.ConalHead(3, 2, seed=5)
        model, _ = resnet_torch.train(images, np.eye(3)[labels[:, 0]], 3, crowd=(head, np.zeros_like(labels), labels),
                                      depth=8, epochs=2, batch_size=4, pad=0, progress=False, seed=5)
        runs.append([p.detach().clone() for p in [*model.net.parameters(), *head.parameters()]])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


@needs_crowdkit
def test_conals_omega_reads_the_image_or_the_features():
    """omega="image" (the authors' code): the trainer hands the head the flattened image, so omega's
    layers are sized to it and no gradient from omega reaches the network; "features" (the default):
    the pooled features."""
    import resnet_torch

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 3, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 3, (8, 2))
    options = dict(depth=8, epochs=1, batch_size=4, pad=0, progress=False)
    for omega, width in (("image", 3 * 8 * 8), ("features", None)):
        head = crowd_methods.ConalHead(3, 2, omega=omega)
        model, _ = resnet_torch.train(images, np.eye(3)[labels[:, 0]], 3, crowd=(head, np.zeros_like(labels), labels),
                                      **options)
        assert head.conal.diff_linear_1.in_features == (width or model.net.output.in_features)  # omega's first layer


# ----------------------------------------------------------------------------- MBEM.py

@pytest.mark.parametrize("algorithm, flags, expected", [
    ("conal", ["--conal-optimizer", "authors", "--conal-omega", "image", "--conal-separation", "0"],
     {"optimizer": "authors", "omega": "image", "separation": 0.0, "seed": 4}),
    ("conal", [], {"optimizer": "release", "omega": "features", "separation": crowd_methods.CONAL_SEPARATION,
                   "seed": 4}),
    ("crowdlayer", ["--crowdlayer-optimizer", "authors"], {"optimizer": "authors"}),
])
def test_each_heads_flags_reach_the_head(monkeypatch, algorithm, flags, expected):
    """MBEM.py builds a cell's head with the flags of its method, and only those."""
    made = {}

    class Recording:
        def __init__(self, K, m, **options):
            made.update(options, K=K, m=m)

        def confusions(self):
            return None

    monkeypatch.setattr(crowd_methods, "missing", lambda methods: None)
    monkeypatch.setitem(crowd_methods.HEADS, algorithm, Recording)
    config, _, _ = settings.parse(["--preset", "smoke", "--backend", "torch", "--algorithms", algorithm, *flags,
                                   "--out", "unused"])
    cell = SimpleNamespace(algorithm=algorithm, seed=4, ann=annotations([(0, 0, 0), (1, 1, 2)], 2, 2, 3))
    MBEM.Experiment.from_crowd_head(SimpleNamespace(config=config, K=3), cell,
                                    lambda targets, algorithm, crowd: SimpleNamespace(train_probs=np.eye(3)[:2]))
    assert made == {**expected, "K": 3, "m": 2}


@pytest.mark.slow
@needs_cleanlab
@needs_crowdkit
def test_each_method_on_digits_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = run_script("MBEM.py", "--preset", "smoke", "--backend", "torch", "--no-compile", "--no-two-stage",
                        "--algorithms", "wmv,mbem,crowdlab,crowdlayer,conal", "--epochs", "4", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "crowdlab: no r = 1 cells" in result.stdout
    ran = json.loads((out / "results.json").read_text())["cells"]
    # CROWDLAB is left out at r = 1, where every item has one label
    assert sorted((c["redundancy"], c["algorithm"]) for c in ran) == sorted(
        [(r, a) for r in (1, 3) for a in ("wmv", "mbem", "crowdlayer", "conal")] + [(3, "crowdlab")])
    paired = (out / "paired.csv").read_text()
    assert all(f"mbem - {a}" in paired for a in ("crowdlab", "crowdlayer", "conal"))  # each against MBEM
    cells = {c["algorithm"]: c for c in ran if c["redundancy"] == 3}
    for cell in ran:
        assert 0 <= cell["test_error"] <= 1 and cell["worker_accuracy_mae"] is not None
    assert cells["crowdlab"]["worker_accuracy_kind"] == "quality score"
    assert cells["crowdlayer"]["worker_accuracy_kind"] == "mean confusion diagonal"
    assert (out / "models" / "conal-seed0-r3.pt").exists()
    assert (out / "predictions" / "crowdlayer-seed0-r3.csv").exists()


@pytest.mark.parametrize("flags, message", [
    (["--algorithms", "crowdlab", "--redundancy", "1"], "cleanlab's CROWDLAB needs items with two labels or more"),
    (["--algorithms", "mv,conal", "--backend", "mxnet"], "--algorithms conal train end to end on the torch trainer"),
    (["--algorithms", "mv,mbem", "--crowdlayer-optimizer", "authors"], "--crowdlayer-optimizer: for --algorithms "
     "crowdlayer only"),
    (["--algorithms", "crowdlayer", "--backend", "torch", "--conal-omega", "image"], "--conal-omega: for --algorithms "
     "conal only"),
    (["--algorithms", "crowdlayer", "--backend", "torch", "--conal-separation", "0"], "--conal-separation: for "
     "--algorithms conal only"),
    (["--algorithms", "conal", "--backend", "torch", "--conal-separation", "-1"], "--conal-separation"),
])
def test_the_field_is_refused_in_one_line_where_it_cannot_run(tmp_path, flags, message, capsys, monkeypatch):
    """The rules themselves, whether or not the optional libraries are installed here (that they are
    named when missing: test_a_missing_library_is_named)."""
    monkeypatch.setattr(crowd_methods, "missing", lambda methods: None)
    with pytest.raises(SystemExit) as stop:
        MBEM.main(["--preset", "smoke", "--out", str(tmp_path / "x"), *flags])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_missing_library_is_named(monkeypatch):
    monkeypatch.setattr(crowd_methods, "find_spec", lambda name: None)
    assert crowd_methods.missing(["mv", "conal"]) == ("--algorithms conal needs crowd-kit 1.4, an optional "
                                                     "requirement: pip install -r requirements-extra.txt")
    assert "cleanlab 2.9" in crowd_methods.missing(["crowdlab"]) and crowd_methods.missing(["mbem"]) is None


def test_crowdlabs_probabilities_come_from_models_that_never_saw_the_item():
    """cleanlab asks CROWDLAB for out-of-sample probabilities: every item is predicted once, by a
    model trained on the other folds only, and the folds together train on each item once less."""
    calls = []

    def train_and_predict(kept, held):
        calls.append((kept, held))
        assert not set(kept) & set(held) and len(kept) + len(held) == 11
        return np.tile(held[:, None] / 10.0, (1, 3))  # a recognisable row per held item

    probs = crowd_methods.out_of_fold(11, crowd_methods.CROWDLAB_FOLDS, np.random.default_rng(0), train_and_predict)
    held = np.concatenate([h for _, h in calls])
    assert len(calls) == 2 and sorted(held) == list(range(11))
    assert np.allclose(probs[:, 0], np.arange(11) / 10.0)  # each item's row from the fold that held it out
