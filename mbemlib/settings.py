"""Every setting of MBEM.py, declared once (name, default, help, valid values), the command line
built from those declarations, the presets one setting per line, and the checks a whole set of
settings must pass before any work starts.

    settings, parser = parse(argv)   # a Config: the preset, then the flags given on top of it
    check(parser, settings)          # one line and exit status 2 for settings that cannot run
    plan(settings)                   # the (r, n) cells: the one place the plan is resolved
"""

import argparse
import json
import os
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from importlib.util import find_spec

import noise_sim
from mbemlib.aggregation import END_TO_END, FIELD, MBEM_STEPS, METHODS, canonical, runs_at
from mbemlib.cli import INSTALL, Parser, csv_list, number, output_problem
from mbemlib.pipeline import gpu_ids, stages


def plan_pairs(text):
    """--plan r:n,r:n -> [[r, n], ...]"""
    try:
        pairs = [[int(v) for v in pair.split(":")] for pair in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes r:n pairs like 1:50000,3:17000, not {text!r}") from None
    if any(len(p) != 2 or p[0] < 1 or p[1] < 1 for p in pairs):
        raise argparse.ArgumentTypeError(f"takes positive r:n pairs, not {text!r}")
    return pairs


def gpu_list(text):
    try:
        return gpu_ids(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def method_list(text):
    names = [canonical(a) for a in csv_list(str)(text)]
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown algorithms {','.join(unknown)}: choose from {','.join(METHODS)}")
    return names


@dataclass(frozen=True)
class Setting:
    name: str
    default: object
    help: str
    type: object = None  # an argparse type (checks the range); None with `choices` or a switch
    choices: tuple = None
    switch: bool = False  # --name / --no-name
    result: bool = True  # False: changing it changes no result (a resumed run may differ in it)

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")


SETTINGS = (
    # data and labels
    Setting("dataset", "cifar10", "cifar10 (downloaded), folder (--source, decoded into memory), digits, or imagenet "
            "(--source with train/<class>/ and val/<class>/ JPEGs, streamed; ResNet-18)",
            choices=("cifar10", "folder", "digits", "imagenet")),
    Setting("source", None, "a folder or .tar.gz of images of one size: train/<class>/* give training images their "
            "class, test/<class>/* the test set, any other image is a training image of unknown class"),
    Setting("annotations", None, "CSV of real labels (item, worker, label) instead of simulated workers; items "
            "name training images (<class>/<file> under train/, or CIFAR-10's official index)"),
    Setting("data_dir", None, "download and cache folder (default $MBEM_DATA or data/)", result=False),
    # simulated workers
    Setting("workers", 100, "number of simulated workers m", number(int, 1)),
    Setting("gamma", 0.2, "probability that a worker (or a row, class-wise) is a hammer", number(float, 0, 1)),
    Setting("worker_model", "hammer-spammer", "simulated worker distribution", choices=tuple(noise_sim.WORKER_MODELS)),
    Setting("group_size", None, "classes fall in groups of g and each worker has one g x g confusion (the paper's "
            "ImageNet: 10)", number(int, 2)),
    # the fixed-budget sweep
    Setting("budget", None, "total labels; with --redundancy, n = budget // r items", number(int, 1)),
    Setting("redundancy", None, "redundancies for the fixed-budget sweep, e.g. 1,3,5", csv_list(int, 1)),
    Setting("plan", None, "explicit (r, n) pairs instead of a sweep, e.g. 13:4000,1:50000 (the paper preset: the "
            "release's)", plan_pairs),
    Setting("algorithms", ["mv", "wmv", "mbem"], f"comma-separated, from {','.join(METHODS)} (ds: em)", method_list),
    # MBEM
    Setting("rounds", 1, "MBEM's rounds after its bootstrap model: each an M-step, an E-step and a training (the "
            "paper's T counts trainings, the bootstrap's too: T = rounds + 1; the release: 1, T = 2)", number(int, 1)),
    Setting("mbem_step", "release", "MBEM's M-step: release (the model's predictions taken for the truth, the "
            "paper's) or one-coin (each worker right or uniformly random, corrected for the model's own accuracy, "
            "estimated as the best workers' agreement with it: aggregation.one_coin_step) or per-class-coin (a coin "
            "per worker and class, corrected for the model's precision on each class, estimated from the best workers "
            "on it: aggregation.per_class_coin_step); docs/worker-estimates.md; one-coin is the step "
            "docs/beyond-mbem.md recommends, the lowest or within 0.003 of the lowest test error of every method run",
            choices=tuple(MBEM_STEPS)),
    Setting("bootstrap_epochs", None, "epochs of the WMV model MBEM starts from, where MBEM trains it (no wmv in "
            "--algorithms; default --epochs): a short bootstrap and a longer final training, e.g. --epochs 20 "
            "--bootstrap-epochs 10 (docs/beyond-mbem.md: one-coin MBEM's lead at 30 epochs of images)",
            number(int, 1)),
    Setting("class_prior", False, "use the class prior q in MBEM's E-step (the paper's Algorithm 1; the release has "
            "none); with a weak bootstrap model q imports its errors (docs/reproducing.md: results/cpu-rounds)",
            switch=True),
    # the field's end-to-end methods (mbemlib/crowd_methods.py; docs/beyond-mbem.md)
    Setting("crowdlayer_optimizer", "release", "crowdlayer: release (the network on the release's NAG schedule, "
            "the crowd matrices with Adam at the authors' 1e-3) or authors (the whole network and the matrices with "
            "Adam at 1e-3, constant, as the authors train it)", choices=("release", "authors")),
    Setting("conal_optimizer", "release", "conal: release (the network on the release's NAG schedule, the crowd "
            "matrices and omega with Adam at the authors' 1e-2) or authors (everything with Adam at 1e-2, constant)",
            choices=("release", "authors")),
    Setting("conal_omega", "features", "conal: what omega, each label's weight on the common confusion, reads: "
            "features (the network's pooled features, its gradient flowing into the network) or image (the "
            "flattened input image, as the authors' code with a backbone has it)", choices=("features", "image")),
    Setting("conal_separation", 1e-5, "conal: the weight of the separation term sum_a ||W_a - W_c|| the loss "
            "subtracts (the authors' 1e-5; unbounded, it drives apart the matrices of workers with few labels: "
            "docs/beyond-mbem.md); 0 drops it", number(float, 0)),
    # the network and its training (the release's recipe itself is pipeline.py's)
    Setting("backend", "mxnet", "the trainer: MXNet (resnet.py, the release's framework) or PyTorch (resnet_torch.py)",
            choices=("mxnet", "torch")),
    Setting("gpus", [], "GPU ids, e.g. 0 or 0,1 (data-parallel; torch: one process each under torchrun); default "
            "the CPU", gpu_list, result=False),
    Setting("precision", "fp32", "torch: bf16 autocast (CUDA, or a CPU with native bf16), or auto: bf16 where "
            "native, else fp32", choices=("fp32", "bf16", "auto")),
    Setting("compile", True, "torch: torch.compile the network", switch=True, result=False),
    Setting("depth", 20, "ResNet depth 6n + 2: 8, 14, 20, 32, 44, 56, 110 (the release: 20); 18 or 34 with "
            "--dataset imagenet", number(int, 8)),
    Setting("epochs", 60, "training epochs (learning rate x0.1 after 2/3 and 5/6 of them)", number(int, 1)),
    Setting("batch_size", 500, "batch size (learning rate scales linearly from 0.5 at 500)", number(int, 2)),
    Setting("lr", None, "learning rate (default 0.5 * batch / 500; with --dataset imagenet 0.1 * batch / 256)",
            number(float, 0, low_open=True)),
    Setting("two_stage", True, "retrain from scratch on the first model's hard predictions (the release does)",
            switch=True),
    Setting("augment_pad", 4, "augmentation: pad by this many pixels (fill 127), random crop, mirror; 0: off",
            number(int, 0)),
    Setting("epoch_images", "labelled", "all: every epoch also passes the unlabelled training images, with zero "
            "targets (the release; with --annotations always labelled: images nobody labelled are not trained on)",
            choices=("labelled", "all")),
    Setting("shuffle", True, "a new batch order every epoch (--no-shuffle: one fixed order, the release)",
            switch=True),
    Setting("predict_augmented", False, "predict the training items on randomly cropped and mirrored images "
            "(the release)", switch=True),
    Setting("select_epoch", "test", "which epoch's model is tested: last, best on a validation split, or best on "
            "test (the release; optimistic)", choices=("last", "val", "test")),
    Setting("val_size", 5000, "validation images held out of the training pool for --select-epoch val",
            number(int, 1)),
    Setting("image_size", 224, "--dataset imagenet: the crop the network sees", number(int, 8)),
    Setting("loader_workers", 2, "--dataset imagenet: image-decoding processes", number(int, 0), result=False),
    # the run
    Setting("seeds", [0], "comma-separated seeds, one full sweep each", csv_list(int, 0)),
    Setting("out", None, "output folder (default results/<preset>)", result=False),
)
NOT_RESULTS = tuple(s.name for s in SETTINGS if not s.result)

Config = make_dataclass("Config", [(s.name, object, field(default_factory=lambda d=s.default: _copy(d)))
                                   for s in SETTINGS])
Config.__doc__ = "One value per Setting; presets and flags replace the defaults."


def _copy(value):
    return list(value) if isinstance(value, list) else value


CPU = dict(
    backend="torch",
    precision="auto",
    budget=50000,
    redundancy=[1, 3, 5],
    algorithms=["mv", "wmv", "em", "mbem"],
    two_stage=False,
    epochs=10,
    batch_size=128,
    select_epoch="last",
    seeds=[0, 1, 2],
)

PRESETS = {
    # The release's protocol exactly (../shared/PAPER.md), epoch chosen on the test set as released.
    "paper": dict(
        plan=[list(p) for p in noise_sim.RELEASE_PLAN],
        epoch_images="all",
        shuffle=False,
        predict_augmented=True,
    ),
    # The release's network and budget on a CPU with the torch backend: docs/reproducing.md.
    "cpu": CPU,
    # The first CPU reproduction (MXNet, ResNet-8, a 10,000-label budget): results/cpu-mxnet's settings.
    "cpu-mxnet": dict(
        budget=10000,
        redundancy=[1, 3, 5],
        algorithms=["mv", "wmv", "em", "mbem"],
        two_stage=False,
        depth=8,
        epochs=12,
        batch_size=128,
        select_epoch="last",
        seeds=[0, 1, 2],
    ),
    # CIFAR-10N's real human labels (cifar10n.py makes the CSV) at the cpu preset's settings: docs/real-labels.md.
    "cifar10n": dict(
        CPU,
        redundancy=[1, 3],
        algorithms=["mv", "wmv", "em", "mbem", "clean"],
    ),
    # The paper's ImageNet setting, for GPUs: docs/imagenet.md.
    "imagenet": dict(
        dataset="imagenet",
        backend="torch",
        precision="auto",
        workers=1000,
        group_size=10,
        budget=1_200_000,
        redundancy=[1, 3, 5, 7, 9],
        two_stage=False,
        depth=18,
        epochs=90,
        batch_size=256,
        select_epoch="val",
        val_size=10000,
    ),
    # Every algorithm, tiny: for tests and CI.
    "smoke": dict(
        dataset="digits",
        workers=20,
        budget=600,
        redundancy=[1, 3],
        algorithms=[a for a in METHODS if a not in FIELD],  # the field's need optional libraries
        depth=8,
        epochs=10,
        batch_size=50,
        augment_pad=1,
        select_epoch="val",
        val_size=200,
    ),
    # Offline on scikit-learn's digits.
    "demo": dict(
        dataset="digits",
        workers=20,
        gamma=0.3,
        budget=1000,
        redundancy=[1, 2, 4],
        algorithms=["mv", "wmv", "em", "mbem", "clean"],
        depth=8,
        epochs=30,
        batch_size=50,
        augment_pad=1,
        select_epoch="val",
        val_size=250,
    ),
}


def saved_config(folder):
    """The Config a results folder's results.json was made with (settings it does not know are left out)."""
    with open(os.path.join(folder, "results.json")) as f:
        saved = json.load(f)["config"]
    names = {f.name for f in fields(Config)}
    return Config(**{k: v for k, v in saved.items() if k in names})


def preset(name, **changes):
    """The Config of a preset, with `changes` on top (its out folder results/<name> unless given)."""
    values = dict(PRESETS[name], out=f"results/{name}")
    values.update(changes)
    return Config(**{k: _copy(v) for k, v in values.items()})


def plan(config):
    """[[r, n]] cells: n = budget // r for each --redundancy, else --plan's pairs; [] with real labels
    and neither (every label of every image once: MBEM.py's r = 0 cell)."""
    if config.redundancy:
        return [list(p) for p in noise_sim.fixed_budget_plan(config.budget, config.redundancy)]
    return [list(p) for p in config.plan or []]


def as_flag(value):
    """A setting's value as its flag takes it: 1,3,5 for a list, 13:4000,1:50000 for a plan."""
    if isinstance(value, list | tuple):
        return ",".join(":".join(map(str, v)) if isinstance(v, list | tuple) else str(v) for v in value)
    return str(value)


def parser(description, preset_name="paper"):
    """The command line, its help showing the defaults of `preset_name` (what the run would get)."""
    p = Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                   help=f"base settings; the flags below override them (default: paper; the defaults shown are "
                        f"the {preset_name} preset's)")
    for s in SETTINGS:
        default = PRESETS[preset_name].get(s.name, s.default)  # what a run with this preset gets
        if s.switch:
            p.add_argument(s.flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{s.help} (default: {'on' if default else 'off'})")
        else:
            shown = f" (default: {as_flag(default)})" if default not in (None, []) else ""
            p.add_argument(s.flag, type=s.type, choices=s.choices, help=s.help + shown)
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved settings, the cells and trainings to run and an estimated time (from "
                        "a few timed batches), then exit without training")
    p.add_argument("--speed", type=number(float, 0, low_open=True), metavar="IMG_PER_S",
                   help="with --dry-run: estimate at this many training images per second instead of timing batches "
                        "(a machine busy with a training times them slow, and slows it)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print every epoch's line on the screen too (it always goes to <out>/train.log)")
    p.add_argument("--plot-only", action="store_true",
                   help="redraw the figures and CSVs from --out/results.json and exit")
    return p


def parse(argv=None, description=None):
    """(Config, argparse args, parser): the preset's settings, then every flag given on top. A sweep
    given on the command line (--redundancy or --plan) replaces the preset's, whichever it is."""
    first = argparse.ArgumentParser(add_help=False)  # the preset first: --help shows its defaults
    first.add_argument("--preset")
    chosen = first.parse_known_args(argv)[0].preset
    p = parser(description, chosen if chosen in PRESETS else "paper")
    args = p.parse_args(argv)
    given = {s.name: getattr(args, s.name) for s in SETTINGS if getattr(args, s.name) is not None}
    if "plan" in given and "redundancy" in given:
        p.error("--plan and --redundancy both give the cells: choose one")
    if "plan" in given:
        given["redundancy"] = None
    elif "redundancy" in given:
        given["plan"] = None
    elif args.annotations and args.preset == "paper":
        given.update(plan=None, redundancy=None)  # real labels and no sweep asked for: every label once
    if args.annotations and "epoch_images" not in given:
        given["epoch_images"] = "labelled"  # real labels: images nobody labelled are not trained on
    return preset(args.preset, **given), args, p


def idle_flags(config, args):
    """The line refusing flags given that would do nothing in this run, or None."""
    given = {s.name for s in SETTINGS if getattr(args, s.name, None) is not None}
    if config.annotations and (idle := {"gamma", "workers", "worker_model"} & given):
        return f"{flags(idle)}: for simulated workers only; with --annotations the workers are real"
    if config.dataset != "imagenet" and (idle := {"image_size", "loader_workers"} & given):
        return f"{flags(idle)}: for --dataset imagenet's streamed images only"
    if "bootstrap_epochs" in given and "mbem" not in config.algorithms:
        return "--bootstrap-epochs: for --algorithms mbem only (the WMV model it starts from)"
    for method in END_TO_END:  # each end-to-end method's own training flags
        if (idle := {s.name for s in SETTINGS if s.name.startswith(method + "_")} & given) and \
                method not in config.algorithms:
            return f"{flags(idle)}: for --algorithms {method} only"
    return None


def check(p, config, args):
    """Reject settings that cannot run, or flags given that would do nothing in this run, with one
    clear line (argparse exits with status 2)."""
    cells, preset_name = plan(config), args.preset
    if args.speed is not None and not args.dry_run:
        p.error("--speed: goes with --dry-run (the speed it estimates at); a run measures its own")
    if len(set(config.seeds)) != len(config.seeds):
        p.error(f"--seeds {','.join(map(str, config.seeds))}: a seed given twice would count twice in every mean")
    if problem := idle_flags(config, args):
        p.error(problem)
    if config.bootstrap_epochs not in (None, config.epochs) and "wmv" in config.algorithms:
        p.error(f"--bootstrap-epochs {config.bootstrap_epochs}: MBEM starts from the WMV cell's model, trained for "
                f"--epochs {config.epochs}; leave wmv out of --algorithms (or run it in another --out)")
    if config.redundancy and not config.budget:
        p.error("--redundancy needs --budget")
    if config.dataset in ("folder", "imagenet") and not config.source:
        p.error(f"--dataset {config.dataset} needs --source PATH (a folder or .tar.gz of images)")
    if config.source and not os.path.exists(config.source):
        p.error(f"--source {config.source}: no such folder or archive")
    try:
        stages(config.depth, imagenet=config.dataset == "imagenet")
    except ValueError as err:
        p.error(f"--depth: {err}")
    if config.dataset == "imagenet" and (config.epoch_images == "all" or config.augment_pad == 0):
        p.error("--dataset imagenet trains on the labelled images with the standard augmentation: "
                "no --epoch-images all or --augment-pad 0")
    if config.annotations and config.group_size:
        p.error("--group-size is for simulated workers (real labels in groups are not supported yet)")
    for flag, folder in (("--out", config.out), ("--data-dir", config.data_dir)):
        if folder and (problem := output_problem(folder, folder=True)):
            p.error(f"{flag}: {problem}")
    if preset_name == "cifar10n" and not config.annotations:
        p.error("--preset cifar10n needs --annotations: python cifar10n.py ../shared/data/crowd/cifar10n "
                "--out cifar10n.csv (add --items jpeg for a class-folder --source)")
    if config.annotations:
        if not os.path.isfile(config.annotations):
            p.error(f"--annotations {config.annotations}: no such file")
        if "oracle" in config.algorithms:
            p.error("--algorithms oracle needs simulated workers (no true confusions exist for real ones)")
        if config.epoch_images == "all":
            p.error("--epoch-images all trains on unlabelled images; with --annotations only labelled images are "
                    "trained on")
    elif not cells:
        p.error("no cells to run: give --budget and --redundancy, or --plan")
    elif max(r for r, _ in cells) > config.workers:
        p.error("a redundancy exceeds the number of workers: each item needs distinct workers")
    check_field(p, config, cells)
    if config.backend == "mxnet" and config.precision == "bf16":
        p.error("--precision bf16 is for --backend torch: MXNet 1.9.1's bf16 (oneDNN 2.4, no AMX) measured "
                "slower than its fp32 here")
    needed = {"mxnet": config.backend == "mxnet", "torch": config.backend == "torch" or config.dataset == "imagenet"}
    for package in (name for name, needs in needed.items() if needs and find_spec(name) is None):
        p.error(INSTALL[package])


def check_field(p, config, cells):
    """The field's methods (crowd_methods.py): their optional libraries, the torch trainer for the
    end-to-end two, no grouped classes, and CROWDLAB only where items have several labels (a sweep
    leaves its r = 1 cells out: aggregation.runs_at)."""
    chosen = [a for a in config.algorithms if a in FIELD]
    if not chosen:
        return
    from mbemlib.crowd_methods import missing  # torch with it: only for these methods

    if problem := missing(chosen):
        p.error(problem)
    end_to_end = [a for a in chosen if a in END_TO_END]
    if end_to_end and config.backend != "torch":
        p.error(f"--algorithms {','.join(end_to_end)} train end to end on the torch trainer: add --backend torch")
    if config.group_size:
        p.error(f"--algorithms {','.join(chosen)}: not for grouped classes (--group-size)")
    if "crowdlab" in chosen and cells and not any(runs_at("crowdlab", r) for r, _ in cells):
        p.error("--algorithms crowdlab: cleanlab's CROWDLAB needs items with two labels or more, and r = 1 gives "
                "each one label: add a redundancy of 2 or more (its r = 1 cells are left out)")


def flags(names):
    return ", ".join(sorted("--" + n.replace("_", "-") for n in names))


def comparable(config):
    """The settings that make a result (a resumed run must match them)."""
    return {k: v for k, v in asdict(config).items() if k not in NOT_RESULTS}


def trainings(config, cell, cells, saved_bootstrap):
    """The models a cell trains (at most: targets that turn out equal share one, as label-only EM's
    at r = 1 may), each as the share of the cell's items it trains on times its share of --epochs,
    each `stages` times: MV and WMV share one at r = 1; MBEM trains `rounds` and, without a WMV cell
    or a saved WMV model, its bootstrap too (for --bootstrap-epochs); CROWDLAB one per fold on the
    other folds' items, then its final one."""
    seed, r, n, algorithm = cell
    if algorithm == "wmv" and r == 1 and (seed, r, n, "mv") in cells:
        return []
    if algorithm == "mbem":
        bootstrap = (seed, r, n, "wmv") not in cells and not saved_bootstrap(seed, r, n)
        return [1.0] * config.rounds + [(config.bootstrap_epochs or config.epochs) / config.epochs] * bootstrap
    if algorithm == "crowdlab":
        from mbemlib.crowd_methods import CROWDLAB_FOLDS  # torch: only where CROWDLAB runs

        return [(CROWDLAB_FOLDS - 1) / CROWDLAB_FOLDS] * CROWDLAB_FOLDS + [1.0]
    return [1.0]
