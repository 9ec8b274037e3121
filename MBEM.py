"""The paper's fixed-budget experiment end to end: simulate workers (or read real labels), label
the items at each redundancy, aggregate (MV, WMV, label-only EM, MBEM, oracle, clean labels),
train the ResNet on each aggregate, test it, and write results.json; report.py turns it into
tables, paired statistics and figures.

    python MBEM.py                        # the `paper` preset: the release's protocol on CIFAR-10
    python MBEM.py --preset cpu --dataset folder --source ../shared/data/cifar10-jpeg.tar.gz
    python MBEM.py --preset demo          # offline, scikit-learn digits, a few minutes
    python MBEM.py --help

Data flow per (seed, redundancy r, n items): true labels of the first n items of a seeded
shuffle -> noise_sim labels (or annotations.subsample of real ones) -> aggregation targets ->
resnet.train or resnet_torch.train -> test error -> a cell in results.json -> report.py.
"""

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import metadata

import numpy as np

import aggregation as agg
import annotations as crowd
import dataset as data
import imagenet
import noise_sim
import report
from cli import Parser, csv_list, number, output_problem
from pipeline import IMAGENET_DROPS, gpu_ids, stages

ALGORITHMS = ("mv", "wmv", "em", "mbem", "oracle", "clean")


class RunError(Exception):
    """A problem with the user's data or output folder: one line on stderr, exit status 2."""


@dataclass
class Config:
    dataset: str = "cifar10"
    annotations: str = None  # a CSV of real labels (item, worker, label) instead of simulated workers
    source: str = None  # the class-folder tree or .tar.gz for --dataset folder
    data_dir: str = None
    gpus: str = None
    backend: str = "mxnet"  # or "torch" (resnet_torch.py)
    precision: str = "fp32"  # torch: "bf16", or "auto" (bf16 where the device computes it natively)
    compile: bool = True  # torch: torch.compile the network
    workers: int = 100
    gamma: float = 0.2
    worker_model: str = "hammer-spammer"
    group_size: int = None  # classes in groups of g, one g x g confusion per worker (the paper's ImageNet)
    budget: int = None  # with `redundancy`: n = budget // r for each r
    redundancy: list = None
    plan: list = field(default_factory=lambda: [list(p) for p in noise_sim.RELEASE_PLAN])
    algorithms: list = field(default_factory=lambda: ["mv", "wmv", "mbem"])
    rounds: int = 1
    two_stage: bool = True
    class_prior: bool = False
    depth: int = 20
    epochs: int = 60
    batch_size: int = 500
    lr: float = None  # None: 0.5 at batch 500, linear in the batch size
    augment_pad: int = 4
    epoch_images: str = "labelled"  # "all": every epoch also passes the unlabelled images (the release)
    shuffle: bool = True  # False: one batch order for every epoch (the release)
    predict_augmented: bool = False  # predict training items on augmented images (the release)
    select_epoch: str = "test"
    val_size: int = 5000
    image_size: int = 224  # --dataset imagenet: the crop the network sees
    loader_workers: int = 2  # --dataset imagenet: decoding processes
    seeds: list = field(default_factory=lambda: [0])
    out: str = "results/paper"

    def resolved_plan(self):
        """[[r, n]] cells; [] with real labels and no sweep: every label of every image (MBEM.py: r = 0)."""
        if self.redundancy:
            return [list(p) for p in noise_sim.fixed_budget_plan(self.budget, self.redundancy)]
        return [list(p) for p in self.plan or []]


PRESETS = {
    # The release's protocol exactly (../shared/PAPER.md), epoch chosen on the test set as released.
    "paper": Config(epoch_images="all", shuffle=False, predict_augmented=True),
    # The release's network and budget on a CPU with the torch backend: see README "Reproducing the paper".
    "cpu": Config(backend="torch", precision="auto", budget=50000, redundancy=[1, 3, 5], plan=None,
                  algorithms=["mv", "wmv", "em", "mbem"], two_stage=False, epochs=10, batch_size=128,
                  select_epoch="last", seeds=[0, 1, 2], out="results/cpu"),
    # The first CPU reproduction (MXNet, ResNet-8, a 10,000-label budget), kept on record.
    "cpu-mxnet": Config(budget=10000, redundancy=[1, 3, 5], plan=None, algorithms=["mv", "wmv", "em", "mbem"],
                        two_stage=False, depth=8, epochs=12, batch_size=128, select_epoch="last", seeds=[0, 1, 2],
                        out="results/cpu-mxnet"),
    # CIFAR-10N's real human labels (cifar10n.py makes the CSV) at the cpu preset's settings: see README.
    "cifar10n": Config(backend="torch", precision="auto", budget=50000, redundancy=[1, 3], plan=None,
                       algorithms=["mv", "wmv", "em", "mbem", "clean"], two_stage=False, epochs=10, batch_size=128,
                       select_epoch="last", seeds=[0, 1, 2], out="results/cifar10n"),
    # The paper's ImageNet setting, for GPUs: see README "The ImageNet setting".
    "imagenet": Config(dataset="imagenet", backend="torch", precision="auto", workers=1000, group_size=10,
                       budget=1_200_000, redundancy=[1, 3, 5, 7, 9], plan=None, algorithms=["mv", "wmv", "mbem"],
                       two_stage=False, depth=18, epochs=90, batch_size=256, select_epoch="val", val_size=10000,
                       image_size=224, seeds=[0], out="results/imagenet"),
    # Every algorithm, tiny: for tests and CI.
    "smoke": Config(dataset="digits", workers=20, budget=600, redundancy=[1, 3], plan=None,
                    algorithms=list(ALGORITHMS), depth=8, epochs=10, batch_size=50, augment_pad=1,
                    select_epoch="val", val_size=200, out="results/smoke"),
    # Offline on scikit-learn's digits.
    "demo": Config(dataset="digits", workers=20, gamma=0.3, budget=1000, redundancy=[1, 2, 4], plan=None,
                   algorithms=["mv", "wmv", "em", "mbem", "clean"], depth=8, epochs=30, batch_size=50,
                   augment_pad=1, select_epoch="val", val_size=250, out="results/demo"),
}

# Targets this close give the same model up to float32 rounding (the trainers see float32 rows), so a
# cell reuses a model already trained on them: MV and WMV at r = 1 (identical one-hot rows), and
# label-only EM at r = 1 on many items, which converges to MV's rows within 1e-10 (50,000 items).
SAME_TARGETS = 1e-6

# Settings that do not change any result: a resumed run may differ in these.
NOT_RESULTS = ("gpus", "out", "data_dir", "compile", "loader_workers")


# ----------------------------------------------------------------------------- command line

def parse_plan(text):
    try:
        plan = [[int(v) for v in pair.split(":")] for pair in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--plan takes r:n pairs like 1:50000,3:17000, not {text!r}") from None
    if any(len(p) != 2 or p[0] < 1 or p[1] < 1 for p in plan):
        raise argparse.ArgumentTypeError(f"--plan takes positive r:n pairs, not {text!r}")
    return plan


def parse_args(argv=None):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--preset", choices=sorted(PRESETS), default="paper", help="base settings; the flags below override them")
    a("--dataset", choices=["cifar10", "folder", "digits", "imagenet"],
      help="cifar10 (downloaded), folder (--source, decoded into memory), digits, or imagenet (--source with "
           "train/<class>/ and val/<class>/ JPEGs, streamed; ResNet-18)")
    a("--source", help="class-folder tree or .tar.gz of one (train/<class>/*, test/<class>/*)")
    a("--annotations", help="CSV of real labels (item, worker, label) instead of simulated workers; items name "
                            "training images (<class>/<file> under train/, or CIFAR-10's official index)")
    a("--data-dir", help="download and cache folder (default $MBEM_DATA or data/)")
    a("--gpus", help="GPU ids, e.g. 0 or 0,1 (data-parallel; torch: one process each under torchrun); "
                     "default the CPU")
    a("--backend", choices=["mxnet", "torch"], help="the trainer: MXNet (resnet.py, the release's framework) or "
                                                     "PyTorch (resnet_torch.py)")
    a("--precision", choices=["fp32", "bf16", "auto"],
      help="torch: bf16 autocast (CUDA, or a CPU with native bf16), or auto: bf16 where native, else fp32")
    a("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch: torch.compile the network")
    a("--workers", type=number(int, 1), help="number of simulated workers m")
    a("--gamma", type=number(float, 0, 1), help="probability that a worker (or a row, class-wise) is a hammer")
    a("--worker-model", choices=sorted(noise_sim.WORKER_MODELS), help="simulated worker distribution")
    a("--group-size", type=number(int, 2),
      help="classes fall in groups of g and each worker has one g x g confusion (the paper's ImageNet: 10)")
    a("--budget", type=number(int, 1), help="total labels; with --redundancy, n = budget // r items")
    a("--redundancy", type=csv_list(int, 1), help="redundancies for the fixed-budget sweep, e.g. 1,3,5")
    a("--plan", type=parse_plan, help="explicit (r, n) pairs, e.g. 13:4000,1:50000 (the release's by default)")
    a("--algorithms", type=csv_list(str), help=f"comma-separated, from {','.join(ALGORITHMS)}")
    a("--rounds", type=number(int, 1), help="MBEM rounds T (the release: 1)")
    a("--two-stage", action=argparse.BooleanOptionalAction, default=None,
      help="retrain from scratch on the first model's hard predictions (the release does)")
    a("--class-prior", action=argparse.BooleanOptionalAction, default=None,
      help="use the class prior q in MBEM's E-step (the paper's Algorithm 1; the release has none); "
           "with a weak bootstrap model q imports its errors (README: results/cpu-rounds)")
    a("--depth", type=number(int, 8),
      help="ResNet depth 6n + 2: 8, 14, 20, 32, 44, 56, 110 (the release: 20); 18 or 34 with --dataset imagenet")
    a("--epochs", type=number(int, 1), help="training epochs (learning rate x0.1 after 2/3 and 5/6 of them)")
    a("--batch-size", type=number(int, 2), help="batch size (learning rate scales linearly from 0.5 at 500)")
    a("--lr", type=number(float, 0, low_open=True),
      help="learning rate (default 0.5 * batch / 500; with --dataset imagenet 0.1 * batch / 256)")
    a("--augment-pad", type=number(int, 0),
      help="augmentation: pad by this many pixels (fill 127), random crop, mirror; 0: off")
    a("--epoch-images", choices=["labelled", "all"],
      help="all: every epoch also passes the unlabelled training images, with zero targets (the release)")
    a("--shuffle", action=argparse.BooleanOptionalAction, default=None,
      help="a new batch order every epoch (--no-shuffle: one fixed order, the release)")
    a("--predict-augmented", action=argparse.BooleanOptionalAction, default=None,
      help="predict the training items on randomly cropped and mirrored images (the release)")
    a("--select-epoch", choices=["last", "val", "test"],
      help="which epoch's model is tested: last, best on a validation split, or best on test (the release; optimistic)")
    a("--val-size", type=number(int, 1), help="validation images held out of the training pool for --select-epoch val")
    a("--image-size", type=number(int, 8), help="--dataset imagenet: the crop the network sees (224)")
    a("--loader-workers", type=number(int, 0), help="--dataset imagenet: image-decoding processes (2)")
    a("--seeds", type=csv_list(int, 0), help="comma-separated seeds, one full sweep each")
    a("--out", help="output folder (default results/<preset>)")
    a("--plot-only", action="store_true", help="redraw the figure and CSV from --out/results.json and exit")
    args = p.parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in fields(Config) if getattr(args, f.name, None) is not None}
    if args.plan is not None and args.redundancy is None:
        overrides["redundancy"] = None
    if args.annotations and args.preset == "paper" and args.plan is None and args.redundancy is None:
        overrides.update(plan=None, redundancy=None)  # real labels, no sweep asked for: every label once
    config = replace(PRESETS[args.preset], **overrides)
    if args.out is None and args.preset != "paper":
        config.out = PRESETS[args.preset].out
    return p, args, config


def check(parser, args, config):
    """Reject settings that cannot run, with one clear line (argparse exits with status 2)."""
    unknown = sorted(set(config.algorithms) - set(ALGORITHMS))
    if unknown:
        parser.error(f"unknown algorithms {','.join(unknown)}: choose from {','.join(ALGORITHMS)}")
    if config.redundancy and not config.budget:
        parser.error("--redundancy needs --budget")
    if config.dataset in ("folder", "imagenet") and not config.source:
        parser.error(f"--dataset {config.dataset} needs --source PATH (a class-folder tree)")
    if config.source and not os.path.exists(config.source):
        parser.error(f"--source {config.source}: no such folder or archive")
    try:
        stages(config.depth, imagenet=config.dataset == "imagenet")
    except ValueError as err:
        parser.error(f"--depth: {err}")
    if config.dataset == "imagenet" and (config.epoch_images == "all" or config.augment_pad == 0):
        parser.error("--dataset imagenet trains on the labelled images with the standard augmentation: "
                     "no --epoch-images all or --augment-pad 0")
    if config.annotations and config.group_size:
        parser.error("--group-size is for simulated workers (real labels in groups are not supported yet)")
    for flag, folder in (("--out", config.out), ("--data-dir", config.data_dir)):
        if folder and (problem := output_problem(folder, folder=True)):
            parser.error(f"{flag}: {problem}")
    if args.preset == "cifar10n" and not config.annotations:
        parser.error("--preset cifar10n needs --annotations: python cifar10n.py ../shared/data/crowd/cifar10n "
                     "--out cifar10n.csv (add --items jpeg for a class-folder --source)")
    if config.annotations:
        if not os.path.isfile(config.annotations):
            parser.error(f"--annotations {config.annotations}: no such file")
        for setting, why in (("oracle" in config.algorithms, "--algorithms oracle needs simulated workers (no true "
                                                             "confusions exist for real ones)"),
                             (config.epoch_images == "all", "--epoch-images all trains on unlabelled images; with "
                                                            "--annotations only labelled images are trained on")):
            if setting:
                parser.error(why)
    elif not config.resolved_plan():
        parser.error("no cells to run: give --budget and --redundancy, or --plan")
    elif max(r for r, _ in config.resolved_plan()) > config.workers:
        parser.error("a redundancy exceeds the number of workers: each item needs distinct workers")
    try:
        gpu_ids(config.gpus)
    except ValueError as err:
        parser.error(str(err))
    if config.backend == "mxnet" and config.precision == "bf16":
        parser.error("--precision bf16 is for --backend torch: MXNet 1.9.1's bf16 (oneDNN 2.4, no AMX) measured "
                     "slower than its fp32 here")


def trainer_module(backend):
    """resnet (MXNet) or resnet_torch (PyTorch), imported when first needed."""
    if backend == "mxnet":
        import resnet

        return resnet
    try:
        import resnet_torch
    except ImportError as err:
        raise RunError(f"--backend torch needs PyTorch ({err}): `make setup` installs it, or "
                       "pip install torch==2.13.0+cpu (a GPU: the CUDA build, see README)") from err
    return resnet_torch


# ----------------------------------------------------------------------------- one cell

def load(config):
    if config.dataset == "digits":
        return data.load_digits()
    if config.dataset == "imagenet":
        try:
            return imagenet.load(config.source, config.val_size, config.image_size, config.loader_workers)
        except (OSError, ValueError) as err:
            raise RunError(str(err)) from err
    if config.dataset == "folder":
        try:
            return data.load_folder(config.source, config.data_dir)
        except (OSError, ValueError) as err:
            raise RunError(str(err)) from err
    try:
        return data.load_cifar10(config.data_dir)
    except OSError as err:
        raise RunError(f"cannot get CIFAR-10 ({err}). Offline? Use --dataset folder --source "
                         "PATH with a class-folder copy, e.g. ../shared/data/cifar10-jpeg.tar.gz") from err


def top_k_error(probs, labels, k):
    top = np.argsort(-probs, axis=1)[:, :k]
    return float(1.0 - (top == labels[:, None]).any(axis=1).mean())


class Experiment:
    """Everything one run shares: the data, the split, the labels (simulated or real), the plan of
    (r, n) cells, the models trained so far."""

    def __init__(self, config, ds, writer=True):
        self.config, self.ds, self.writer = config, ds, writer
        self.K = len(ds.classes)
        N = len(ds.train_images)
        # The items are the first n of one fixed shuffle (the same for every seed and redundancy):
        # class-folder trees come sorted by class, so CIFAR's own "first n" needs replacing.
        self.imagenet = config.dataset == "imagenet"
        # A validation set of the dataset's own (ImageNet's 10,000), else one held out of the training images.
        val_size = config.val_size if config.select_epoch == "val" and ds.val_images is None else 0
        if val_size >= N:
            raise RunError(f"--val-size {val_size} leaves none of the {N} training images to train on")
        train_index, val_index = data.validation_split(N, val_size, seed=12345)
        self.pool = np.random.default_rng(12345).permutation(train_index)
        where = " after the validation split" if val_size else ""
        self.validation = None
        if val_size:
            self.validation = (ds.train_images[val_index], ds.train_labels[val_index])
        elif ds.val_images is not None:
            self.validation = (ds.val_images, ds.val_labels)
        if config.group_size and self.K % config.group_size:
            raise RunError(f"--group-size {config.group_size} does not divide the {self.K} classes")
        self.plan = config.resolved_plan()
        self.real = None
        if config.annotations:
            try:
                self.real = crowd.read(config.annotations, ds.train_names, ds.classes)
            except agg.InputError as err:
                raise RunError(f"--annotations {err}") from err
            self.allowed = np.zeros(N, dtype=bool)
            self.allowed[self.pool] = True  # images of the validation split are not trained on
            counts = self.real.per_image(N)[self.allowed]
            self.plan = self.plan or [[0, int((counts > 0).sum())]]
            if max(r for r, _ in self.plan) > counts.max():
                raise RunError(f"a redundancy of {max(r for r, _ in self.plan)} is above what the annotations have: "
                               f"at most {counts.max()} labels per image{where}")
        if min(n for _, n in self.plan) < 2:
            raise RunError("a cell of fewer than 2 items cannot train (BatchNorm needs 2 images a batch): raise "
                           "the budget or lower the redundancy")
        too_big = [n for _, n in self.plan if n > len(self.pool)]
        if too_big:
            raise RunError(f"the plan asks for {max(too_big)} items but only {len(self.pool)} "
                           f"training images are available{where}")
        self.trained = {}  # (seed, items digest) -> [(targets, (train probs, test probs, history))]: see fit
        self.bootstrap = {}  # (seed, r, n) -> the WMV model's predicted class of each item, for MBEM
        self.trainer = trainer_module(config.backend)
        self.precision = "fp32"
        if config.backend == "torch":
            try:
                self.precision = self.trainer.resolve_precision(config.precision, config.gpus)
            except ValueError as err:
                raise RunError(str(err)) from err

    def fit(self, targets, items, seed, tag, grouped=None):
        """Train on soft targets (twice when two-stage). Returns (train probs, test probs, history).

        With epoch_images "all" (the release) the network also sees the rest of the training pool,
        after the labelled items, with all-zero targets: no loss gradient, but BatchNorm statistics
        and optimizer steps, as the release's iterator over all 50,000 images gives them.
        With `grouped` the targets are n x g (each item's group: agg.Grouped), assembled into K
        classes batch by batch, and the training items' probabilities come back n x g too."""
        key, given = (seed, digest(items)), np.asarray(targets)
        for done, result in self.trained.get(key, []):
            if done.shape == given.shape and np.abs(done - given).max() <= SAME_TARGETS:
                return result
        c, ds, trainer = self.config, self.ds, self.trainer
        labelled = ds.train_images[items]
        images = ds.train_images[self.pool] if c.epoch_images == "all" else labelled
        val = self.validation
        test = (ds.test_images, ds.test_labels)
        devices = trainer.parse_gpus(c.gpus)
        options = {"precision": self.precision, "compile": c.compile} if c.backend == "torch" else {}
        if self.imagenet:  # the standard ImageNet schedule: lr 0.1 per 256 images, x0.1 after 1/3 and 2/3
            options.update(imagenet=True, milestones=IMAGENET_DROPS)
        lr = c.lr or (0.1 * c.batch_size / 256 if self.imagenet else None)
        history = []
        for stage in range(2 if c.two_stage else 1):
            if grouped is not None:
                stage_targets = grouped.batch_targets(targets)
            else:
                stage_targets = np.zeros((len(images), self.K))
                stage_targets[:len(items)] = targets
            net, h = trainer.train(images, stage_targets, self.K, depth=c.depth, epochs=c.epochs,
                                   batch_size=c.batch_size, lr=lr, gpus=c.gpus, seed=seed + stage,
                                   select_epoch=c.select_epoch, val=val,
                                   test=test if c.select_epoch == "test" else None, pad=c.augment_pad,
                                   shuffle=c.shuffle, desc=f"{tag} stage {stage + 1}", **options)
            history += [dict(record, stage=stage + 1) for record in h]
            augment = {"pad": c.augment_pad, "rng": np.random.default_rng([seed, stage])} if c.predict_augmented else {}
            train_probs = trainer.predict_proba(net, labelled, devices, columns=grouped and grouped.columns, **augment)
            targets = agg.one_hot(train_probs.argmax(axis=1), train_probs.shape[1])  # the second stage's targets
        result = (train_probs, trainer.predict_proba(net, ds.test_images, devices), history)
        self.trained.setdefault(key, []).append((given.copy(), result))
        return result

    def bootstrap_path(self, seed, r, n):
        return os.path.join(self.config.out, "bootstrap", f"wmv-seed{seed}-r{r}-n{n}.npz")

    def labels(self, seed, r, n, workers):
        """(training images of the n items, their labels at redundancy r, each worker's true
        accuracy), shared by every algorithm. Simulated: the first n images of the pool, labelled by
        `workers`. Real: n images drawn from those with r labels, r of their labels drawn."""
        rng = np.random.default_rng([seed, r, n])
        truth = self.ds.train_labels
        if self.real is None:
            items = self.pool[:n]
            ann = agg.Annotations(*noise_sim.simulate_labels(truth[items], workers, r, rng), n, len(workers), self.K)
            return items, ann, agg.worker_accuracy(workers)
        try:
            items, ann = crowd.subsample(self.real, self.allowed, r, n, rng, self.K)
        except agg.InputError as err:
            raise RunError(str(err)) from err
        return items, ann, crowd.empirical_accuracy(ann, truth[items])

    def cell(self, seed, r, n, algorithm, workers, items, ann, true_accuracy):
        """Run one (seed, r, n, algorithm) cell on the labels `ann` of the training images `items`
        and return its record."""
        c, ds, K = self.config, self.ds, self.K
        start = time.perf_counter()
        truth = ds.train_labels[items]
        rng = np.random.default_rng([seed, r, n, ALGORITHMS.index(algorithm)])
        # Grouped classes (the paper's ImageNet workers): every estimator runs on the labels' positions
        # within their group, targets are n x g, and `classes` maps them back to the K classes.
        grouped = agg.group_labels(ann, c.group_size) if c.group_size else None
        ann, k = (grouped.local, c.group_size) if grouped else (ann, K)
        classes = grouped.classes if grouped else (lambda hard: hard)
        confusions = None
        if algorithm == "mv":
            targets = agg.one_hot(agg.majority_vote(ann, rng), k)
        elif algorithm == "wmv":
            targets = agg.weighted_majority_vote(ann)
        elif algorithm == "em":
            result = agg.dawid_skene(ann)
            targets, confusions = result.posterior, result.confusions
        elif algorithm == "oracle":  # the true confusions, zeros lifted to 1e-10 as the release smooths
            confusions = np.maximum(workers, agg.RELEASE_ZERO)
            targets = agg.posterior(ann, confusions / confusions.sum(axis=2, keepdims=True))
        elif algorithm == "clean":
            targets = agg.one_hot(truth % k if grouped else truth, k)
        if algorithm != "mbem":
            train_probs, test_probs, history = self.fit(targets, items, seed, f"seed {seed} r {r} {algorithm}",
                                                        grouped)
            if algorithm in ("mv", "wmv"):
                confusions = agg.estimate_confusions(ann, targets)
            if algorithm == "wmv":
                self.bootstrap[seed, r, n] = train_probs.argmax(axis=1)
                if self.writer:
                    save_bootstrap(self.bootstrap_path(seed, r, n), self.bootstrap[seed, r, n], ann)
        else:
            # The release bootstraps MBEM from the (final) WMV model's hard predictions on the training
            # items: from this run, or from the file the WMV cell left (a resumed run), or trained anew.
            predicted = self.bootstrap.get((seed, r, n))
            if predicted is None:
                predicted = load_bootstrap(self.bootstrap_path(seed, r, n), ann)
                if predicted is not None and self.writer:
                    print(f"seed {seed} r {r} mbem: bootstrapped from the saved WMV predictions "
                          f"{self.bootstrap_path(seed, r, n)}", flush=True)
            if predicted is None:
                predicted = self.fit(agg.weighted_majority_vote(ann), items, seed, f"seed {seed} r {r} wmv",
                                     grouped)[0].argmax(axis=1)
                if self.writer:  # kept like a WMV cell's: a killed MBEM cell resumes without retraining it
                    save_bootstrap(self.bootstrap_path(seed, r, n), predicted, ann)
            train_probs = agg.one_hot(predicted, k)
            rounds = []  # each round's targets: how many are right, and the largest class's share (a collapse shows)
            for t in range(c.rounds):
                targets, confusions, _ = agg.mbem_step(ann, train_probs, class_prior=c.class_prior)
                hard = classes(targets.argmax(axis=1))
                rounds.append({"label_accuracy": float((hard == truth).mean()),
                               "top_class_share": float(np.bincount(hard).max() / len(hard))})
                train_probs, test_probs, history = self.fit(targets, items, seed,
                                                            f"seed {seed} r {r} mbem round {t + 1}", grouped)
        record = {"redundancy": r, "n": n, "algorithm": algorithm, "seed": seed,
                  "test_error": top_k_error(test_probs, ds.test_labels, 1),
                  "val_error": selected_val_error(history, c.select_epoch),
                  "label_accuracy": float((classes(targets.argmax(axis=1)) == truth).mean()),
                  **worker_fields(ann, confusions, true_accuracy, None if self.real is None else targets),
                  "epochs": len(history), "backend": c.backend, "precision": self.precision,
                  "wall_seconds": time.perf_counter() - start,
                  "train_img_per_s": float(np.mean([h["img_per_s"] for h in history]))}
        if algorithm == "mbem":
            record["rounds"] = rounds
        if K > 10:
            record["test_error_top5"] = top_k_error(test_probs, ds.test_labels, 5)
        if self.real is not None and self.writer:
            self.write_labels(f"{algorithm}-seed{seed}-r{r}", items, targets, confusions)
        return record

    def write_labels(self, name, items, targets, confusions):
        """With real labels: the posterior of every training item and each worker's confusion
        matrix, as the aggregation command line writes them."""
        folder = os.path.join(self.config.out, "labels")
        os.makedirs(folder, exist_ok=True)
        names = [self.ds.train_names[i] for i in items]
        agg.atomic_write(os.path.join(folder, f"{name}-posterior.csv"), agg.posterior_csv(targets, names,
                                                                                          self.ds.classes))
        if confusions is not None:
            agg.atomic_write(os.path.join(folder, f"{name}-workers.csv"),
                             agg.confusions_csv(confusions, self.real.worker_names, self.ds.classes))


def digest(array):
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def labels_digest(ann):
    return hashlib.sha1(b"".join(np.ascontiguousarray(a, np.int64).tobytes()
                                 for a in (ann.items, ann.workers, ann.labels))).hexdigest()


def save_bootstrap(path, predicted, ann):
    """The WMV model's predicted classes, with a digest of the labels they belong to, written
    atomically (a killed run never leaves half a file)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, predicted=predicted.astype(np.int32), labels_digest=labels_digest(ann))
    agg.atomic_write(path, buffer.getvalue())


def load_bootstrap(path, ann):
    """The predicted classes saved by save_bootstrap for exactly these labels, or None (missing,
    unreadable, or for other labels: then MBEM retrains the WMV model rather than trust it)."""
    try:
        with np.load(path) as f:
            predicted, digest = f["predicted"], str(f["labels_digest"])
    except (OSError, ValueError, KeyError):
        return None
    if digest != labels_digest(ann) or predicted.shape != (ann.n,) or not (0 <= predicted).all() \
            or not (predicted < ann.K).all():
        return None
    return predicted.astype(np.int64)


def selected_val_error(history, select_epoch):
    """Validation error of the model that was tested: the final stage's best or last epoch."""
    final = [h for h in history if h["stage"] == history[-1]["stage"] and "val_acc" in h]
    if not final:
        return None
    return 1 - (max(h["val_acc"] for h in final) if select_epoch == "val" else final[-1]["val_acc"])


def worker_fields(ann, confusions, true_accuracy, item_dist=None):
    """Per-worker accuracy, estimated and true, for the workers who gave a label (None for the
    others), and the mean absolute error between them; all None for an algorithm without
    confusions. Simulated workers: the mean of the confusion diagonal, estimated and true. Real
    workers (item_dist, the cell's targets, given): the estimated share of their labels that are
    right, as their empirical accuracy counts (`worker_accuracy_kind` says which)."""
    if confusions is None:
        return {"worker_accuracy_mae": None}
    active = np.bincount(ann.workers, minlength=ann.m) > 0
    if item_dist is None:
        estimated, kind = agg.worker_accuracy(confusions), "mean confusion diagonal"
    else:
        estimated, kind = agg.labels_right(ann, confusions, item_dist), "share of labels right"

    def listed(values):
        return [round(float(v), 5) if a else None for v, a in zip(values, active, strict=True)]

    return {"worker_accuracy_mae": float(np.abs(estimated - true_accuracy)[active].mean()),
            "worker_accuracy": listed(estimated), "worker_accuracy_true": listed(true_accuracy),
            "worker_accuracy_kind": kind}


# ----------------------------------------------------------------------------- results on disk

def environment():
    """The git commit, the versions of the packages that compute, and the CPU the run had: read
    from package metadata, so neither framework is imported just to be named."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except OSError:
        commit = None
    versions = {}
    for name in ("mxnet", "torch", "numpy", "scipy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return commit, versions, {"cpu": cpu_model(), "cores": os.cpu_count()}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None


def write_json(path, obj):
    agg.atomic_write(path, json.dumps(obj, indent=1).encode())


def save(results, out):
    """results.json after each cell, atomically; a failed write (a full disk, a folder made read-only)
    stops the run with one line, and every cell written before is still there."""
    path = os.path.join(out, "results.json")
    try:
        os.makedirs(out, exist_ok=True)  # made at the first finished cell: a run refused earlier leaves nothing
        write_json(path, results)
    except OSError as err:
        raise RunError(f"cannot write {path} ({err.strerror or err}): the cells finished before this one are "
                       "saved; make room (or choose another --out) and run the same command to resume") from err


def comparable(config):
    return {k: v for k, v in asdict(config).items() if k not in NOT_RESULTS}


def load_results(config, check_config=True):
    """The results so far under config.out; a different config there is an error, not a mix.
    A setting that a results.json predates counts as its default (the behaviour before it existed)."""
    path = os.path.join(config.out, "results.json")
    if not os.path.exists(path):
        return {"config": asdict(config), "cells": [], "wall_seconds": 0.0}
    try:
        with open(path) as f:
            results = json.load(f)
        saved = dict(comparable(Config()), **{k: v for k, v in results["config"].items() if k not in NOT_RESULTS})
        if not isinstance(results["cells"], list) or not all(isinstance(c, dict) for c in results["cells"]):
            raise TypeError("its cells are not a list of records")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise RunError(f"{path} is not a results file of MBEM.py ({type(err).__name__}: {err}); "
                       "use another --out, or remove it if it is yours to delete") from err
    if not check_config:
        return results
    current = comparable(config)
    changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    if changed:
        raise RunError(f"{path} was made with a different config ({', '.join(changed)} differ); "
                       "use another --out or remove it")
    results["config"] = asdict(config)
    return results


# ----------------------------------------------------------------------------- main

def main(argv=None):
    parser, args, config = parse_args(argv)
    if args.plot_only:
        path = os.path.join(config.out, "results.json")
        if not os.path.exists(path):
            parser.error(f"--plot-only: no {path}")
        report.report(load_results(config, check_config=False), config.out)
        return 0
    check(parser, args, config)
    rank = join_processes(config)
    results = load_results(config)
    done = {(c["seed"], c["redundancy"], c["n"], c["algorithm"]) for c in results["cells"]}
    results["commit"], results["versions"], results["machine"] = environment()
    ds = load(config)
    experiment = Experiment(config, ds, writer=rank == 0)
    todo = [(s, r, n, a) for s in config.seeds for r, n in experiment.plan for a in order(config.algorithms)]
    if rank == 0:
        print(f"{len(todo) - len(done & set(todo))} of {len(todo)} cells to run; results in {config.out}", flush=True)
    for seed in config.seeds:
        workers = None if config.annotations else noise_sim.simulate_workers(
            config.workers, len(ds.classes), config.gamma, np.random.default_rng(seed), config.worker_model,
            config.group_size)
        for r, n in experiment.plan:
            items, ann, true_accuracy = experiment.labels(seed, r, n, workers)
            for algorithm in order(config.algorithms):
                if (seed, r, n, algorithm) in done:
                    continue
                start = time.perf_counter()
                record = experiment.cell(seed, r, n, algorithm, workers, items, ann, true_accuracy)
                results["cells"].append(record)
                results["wall_seconds"] += time.perf_counter() - start
                if rank == 0:  # under torchrun every process computes the cell; one writes it
                    save(results, config.out)
                    print(f"seed {seed} r {r} n {n} {algorithm}: test error {record['test_error']:.4f} label "
                          f"accuracy {record['label_accuracy']:.3f} ({record['wall_seconds']:.0f} s)", flush=True)
    if rank == 0:
        try:
            os.makedirs(config.out, exist_ok=True)
            report.report(results, config.out)
        except OSError as err:
            raise RunError(f"cannot write the tables and figures in {config.out} ({err.strerror or err}); "
                           "results.json has every cell: make room and run with --plot-only") from err
    return 0


def join_processes(config):
    """This process's rank: 0 alone, or its rank in the process group when started by torchrun
    (one process per GPU, or several on the CPU with gloo for a test)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0
    if config.backend != "torch":
        raise RunError("torchrun starts data-parallel runs of the torch backend only: add --backend torch")
    import torch
    import torch.distributed as dist

    ids = gpu_ids(config.gpus)
    if ids:
        torch.cuda.set_device(ids[int(os.environ.get("LOCAL_RANK", 0)) % len(ids)])
    dist.init_process_group("nccl" if ids else "gloo")
    if not ids:  # CPU processes share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.get_world_size()))
    return dist.get_rank()


def order(algorithms):
    """The order cells run in: as given, but MBEM right after WMV, whose model it bootstraps from
    (so the comparison the paper is about lands first in a long run)."""
    rest = [a for a in algorithms if a != "mbem"]
    if "mbem" not in algorithms:
        return rest
    at = rest.index("wmv") + 1 if "wmv" in rest else len(rest)
    return rest[:at] + ["mbem"] + rest[at:]


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted: finished cells are saved; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
