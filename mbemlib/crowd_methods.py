"""The field's methods beside MBEM, on the same network and labels (docs/beyond-mbem.md):

    crowdlab    CROWDLAB (Goh, Tkachenko and Mueller 2022; cleanlab.multiannotator): each item's
                consensus from its labels and a model's predicted probabilities, every worker and
                the model weighted by their estimated quality. From the model MBEM starts from
                (WMV's), the consensus labels are trained on; the workers' quality scores are
                the worker estimates. cleanlab refuses items that all have a single label.
    crowdlayer  Crowd Layer (Rodrigues and Pereira, AAAI 2018), its 'MW' form: the network's
                softmax output p(x) passes through one K x K matrix per worker, W_a p(x), read as
                the logits of worker a's answer; trained end to end on every (item, worker,
                label), identity at the start; the network alone is tested.
    conal       CoNAL (Chu, Ma and Wang, AAAI 2021): the crowd layer with a second, common matrix
                W_c mixed in per (item, worker), omega p W_c + (1 - omega) p W_a, with
                omega = sigmoid(<u(x), v(a)>) from the item's embedding and the worker's; the
                loss subtracts 1e-5 sum_a ||W_a - W_c|| so workers keep their own confusions.

The libraries are optional (requirements-extra.txt): `missing` names what to install in one
line. crowd-kit's modules hold the parameters; the forward passes follow the papers where
crowd-kit's differs (CoNAL's, see ConalHead).
"""

from importlib import import_module
from importlib.util import find_spec

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the universal spelling)
from torch import nn

LIBRARY = {"crowdlab": "cleanlab", "crowdlayer": "crowdkit", "conal": "crowdkit"}
CONAL_SEPARATION = 1e-5  # the authors' weight on sum_a ||W_a - W_c|| (subtracted from the loss)


def missing(algorithms):
    """A one-line message for the first algorithm whose library is not installed, else None."""
    for algorithm in algorithms:
        library = LIBRARY.get(algorithm)
        if library and find_spec(library) is None:
            return (f"--algorithms {algorithm} needs {'cleanlab 2.9' if library == 'cleanlab' else 'crowd-kit 1.4'}, "
                    "an optional requirement: pip install -r requirements-extra.txt")
    return None


# ----------------------------------------------------------------------------- CROWDLAB

def wide(ann):
    """The labels as cleanlab takes them: an (n x m') float array, NaN where a worker gave no label,
    one column per worker who gave any (cleanlab refuses empty columns), and those workers' ids."""
    active = np.flatnonzero(np.bincount(ann.workers, minlength=ann.m))
    column = np.full(ann.m, -1)
    column[active] = np.arange(len(active))
    table = np.full((ann.n, len(active)), np.nan)
    table[ann.items, column[ann.workers]] = ann.labels
    return table, active


CROWDLAB_FOLDS = 2  # cleanlab asks for out-of-sample probabilities; two folds cost one training's images


def out_of_fold(n, folds, rng, train_and_predict):
    """(n x K) probabilities, each item's from a model that never trained on it: the items fall in
    `folds` random folds, and train_and_predict(kept, held) trains on the items `kept` and returns
    its probabilities on the items `held` (cleanlab's cross-validated predicted probabilities)."""
    order = rng.permutation(n)
    probs = None
    for held in np.array_split(order, folds):
        kept = np.sort(np.setdiff1d(order, held))
        predicted = train_and_predict(kept, np.sort(held))
        probs = np.zeros((n, predicted.shape[1])) if probs is None else probs
        probs[np.sort(held)] = predicted
    return probs


def crowdlab(ann, pred_probs):
    """CROWDLAB's consensus (one-hot, n x K) and each worker's quality score (NaN for a worker with
    no label), from the labels and a model's out-of-sample probabilities on the same items
    (`out_of_fold`). ValueError with
    cleanlab's reason where it refuses (every item labelled once)."""
    if (np.bincount(ann.items, minlength=ann.n) < 2).all():
        raise ValueError("CROWDLAB needs items with two labels or more, and every item here has one "
                         "(cleanlab refuses singly-labelled data)")
    multiannotator = import_module("cleanlab.multiannotator")
    table, active = wide(ann)
    result = multiannotator.get_label_quality_multiannotator(
        table, np.asarray(pred_probs, dtype=float), return_detailed_quality=False, verbose=False)
    consensus = result["label_quality"]["consensus_label"].to_numpy().astype(np.int64)
    quality = np.full(ann.m, np.nan)
    quality[active] = result["annotator_stats"].sort_index()["annotator_quality"].to_numpy()
    targets = np.zeros((ann.n, ann.K))
    targets[np.arange(ann.n), consensus] = 1.0
    return targets, quality


# ----------------------------------------------------------------------------- end to end

def padded(ann):
    """(workers, labels): n x r arrays of each item's labels in label order, -1 where an item has
    fewer than the most labelled item (real labels vary per item)."""
    order = np.argsort(ann.items, kind="stable")
    items = ann.items[order]
    counts = np.bincount(items, minlength=ann.n)
    slot = np.arange(len(items)) - np.repeat(np.cumsum(counts) - counts, counts)
    workers = np.full((ann.n, max(int(counts.max()), 1)), -1, dtype=np.int64)
    labels = workers.copy()
    workers[items, slot], labels[items, slot] = ann.workers[order], ann.labels[order]
    return workers, labels


def crowd_loss(module, logits, features, workers, labels):
    """Per item: the mean over its labels of the cross-entropy of the worker's predicted answer
    (module's logits, items x slots x K) with the label given (items without labels give 0), plus
    the module's penalty, so the batch mean carries it once, as the authors add it to their mean
    loss; fp32 whatever the network computed in."""
    answers = module(logits.float(), features.float(), workers.clamp(min=0))
    given = labels >= 0
    ce = F.cross_entropy(answers.flatten(0, 1), labels.clamp(min=0).flatten(), reduction="none").view(labels.shape)
    per_item = (ce * given).sum(dim=1) / given.sum(dim=1).clamp(min=1)
    return per_item + module.penalty()


class CrowdLayerHead(nn.Module):
    """Crowd Layer 'MW' as the paper and its authors' Keras code apply it: on the softmax output p,
    not on the logits (crowd-kit's module multiplies whatever it is given). Its matrices learn with
    Adam at Keras's default rate, as the authors' demos train them; with optimizer="authors" the
    whole network does too (resnet_torch.train)."""

    LR = 1e-3

    def __init__(self, K, m, optimizer="release"):
        super().__init__()
        from crowdkit.learning import CrowdLayer

        self.layer = CrowdLayer(K, m, conn_type="mw")
        self.optimizer = optimizer  # how resnet_torch.train trains it with the network: release or authors

    def forward(self, logits, features, workers):  # workers: items x slots
        p = torch.softmax(logits, dim=1)
        items, slots = workers.shape
        return self.layer(p.repeat_interleave(slots, dim=0), workers.flatten()).view(items, slots, -1)

    def penalty(self):
        return torch.zeros(())

    def confusions(self):
        """Worker a answers l for an item of class k (p = e_k): softmax over l of W_a[l, k]."""
        return torch.softmax(self.layer.weight.detach().transpose(1, 2), dim=2).cpu().double().numpy()


class ConalHead(nn.Module):
    """CoNAL as its authors' code computes it (zdchu/CoNAL): p W_a and p W_c unnormalised, both
    init 2 I, mixed by omega and read as logits; the loss pushes each W_a away from W_c. The
    parameters and omega's module are crowd-kit's; its forward differs (it normalises only the
    workers' matrices, takes their log, and mixes that log-probability with the common branch's
    raw scores) and has no separation term, so this head computes the mixture itself. Omega reads
    the network's pooled features (omega="features", its gradient flowing into the network) or, as
    the authors' code does, the flattened input image (omega="image": with their VGG-16 backbone
    omega never sees the backbone; on LabelMe their input is precomputed VGG features). The
    matrices and omega's layers learn with Adam at the authors' rate; with optimizer="authors" the
    whole network does too (resnet_torch.train)."""

    LR = 1e-2

    def __init__(self, K, m, optimizer="release", omega="features", separation=CONAL_SEPARATION, seed=0):
        super().__init__()
        from crowdkit.learning import CoNAL

        # crowd-kit draws omega's layers from torch's global generator, which each process seeds at
        # random: drawn from `seed` instead, so a cell is the same cell every run
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conal = CoNAL(K, m)
        self.optimizer = optimizer  # how resnet_torch.train trains it with the network: release or authors
        self.omega_input = omega  # what the trainer passes as `features`: the pooled features, or the image
        self.separation = separation  # the weight on sum_a ||W_a - W_c||: the authors' 1e-5, or --conal-separation

    def forward(self, logits, features, workers):
        p = torch.softmax(logits, dim=1)
        items, slots = workers.shape
        omega = self.conal.simple_common_module(features.repeat_interleave(slots, dim=0), workers.flatten())
        omega = omega.view(items, slots, 1)
        common = (p @ self.conal.common_confusion_matrix)[:, None]  # items x 1 x K
        own = torch.einsum("ik,iskl->isl", p, self.conal.annotator_confusion_matrices[workers])
        return omega * common + (1 - omega) * own

    def penalty(self):
        """-1e-5 sum_a ||W_a - W_c||: the authors subtract it, so workers keep their own confusions.
        Nothing bounds it below: where a worker's labels are few, Adam moves W_a away at its full rate
        (docs/beyond-mbem.md, CIFAR-10N), so `separation` can weigh it less, or 0 to drop it."""
        gap = (self.conal.annotator_confusion_matrices - self.conal.common_confusion_matrix).flatten(1)
        return -self.separation * gap.norm(dim=1).sum()

    def confusions(self):
        """Worker a's own matrix: answers l for class k with softmax over l of W_a[k, l]."""
        return torch.softmax(self.conal.annotator_confusion_matrices.detach(), dim=2).cpu().double().numpy()


HEADS = {"crowdlayer": CrowdLayerHead, "conal": ConalHead}
