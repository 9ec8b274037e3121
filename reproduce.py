"""Every committed CIFAR-10 results/ folder as one queue: each folder's MBEM.py command, in order,
one training at a time, each resuming its own folder; then paper_figure.py draws the four panels.

    python reproduce.py             # run the queue (make results); stop with Ctrl-C, rerun to resume
    python reproduce.py --status    # per folder: cells done of all, precision, time left on this machine
    python reproduce.py --list      # the commands, one per folder, without running them
    python reproduce.py --compare   # the questions the folders answer, as paired differences
    python reproduce.py --compare --markdown   # the same as the rows of the docs' tables

Each folder's precision is fixed in its command, never auto (which each machine resolves its own
way): bf16 and fp32 round differently, so one folder holds one. A folder in bf16 is skipped, with
one line, on a CPU that does not compute bf16 natively (no AVX512-BF16 or AMX), and the queue goes
on to the next, so a user with several machines advances each folder on a machine that can.
Every folder is made without torch.compile, as results/cpu was (compiling changes the rounding).
docs/reproducing.md says what each folder measures and what it found.
"""

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

import numpy as np

from mbemlib import store
from mbemlib.cli import Parser, format_seconds
from mbemlib.settings import gpu_list

# Paths as the folders' configs hold them, relative to the checkout (the commands run there): a
# resumed folder must be given its data by the same name.
ROOT = os.path.dirname(os.path.abspath(__file__))
CIFAR = "../shared/data/cifar10-jpeg.tar.gz"
CIFAR10N = "../shared/data/crowd/cifar10n"
CIFAR10N_CSV = "data/cifar10n-jpeg.csv"


@dataclass(frozen=True)
class Folder:
    """One results folder: MBEM.py's flags beyond the dataset's, its precision, and what it starts
    from: `bootstrap` names a folder whose saved WMV models at its --redundancy it copies (the same
    labels and training, so MBEM alone retrains only its own rounds; MBEM.py checks their labels'
    digest)."""

    out: str
    flags: tuple
    precision: str
    bootstrap: str = None
    annotations: bool = False  # CIFAR-10N's real labels: cifar10n.py writes CIFAR10N_CSV first

    def redundancies(self):
        """The redundancies its flags sweep (--redundancy), whose WMV bootstraps it copies."""
        return self.flags[self.flags.index("--redundancy") + 1].split(",")

    def command(self, source, extra=()):
        return [sys.executable, "MBEM.py", "--dataset", "folder", "--source", source,
                "--precision", self.precision, "--no-compile", *self.flags, "--out", self.out, *extra]


MBEM_R1 = ("--preset", "cpu", "--algorithms", "mbem", "--redundancy", "1")
CLASS_WISE_R1 = (*MBEM_R1, "--worker-model", "class-wise")
# How Crowd Layer and CoNAL train: bench/crowd_sweep.py's choice on noisy validation labels.
CONAL = ("--conal-optimizer", "release", "--conal-omega", "features")
CROWD = ("--crowdlayer-optimizer", "authors", *CONAL)
# The order is the order of the questions: the first panel and its variants (finished), the oracle
# (is the bootstrap model what claim 2 lacks?), Algorithm 1's T and q and a corrected M-step, the
# paper's other panels (each with its corrected step), then the field's methods.
QUEUE = (
    Folder("results/cpu", ("--preset", "cpu"), "bf16"),
    Folder("results/cpu-rounds", (*MBEM_R1, "--rounds", "2", "--class-prior"), "bf16", bootstrap="results/cpu"),
    Folder("results/cpu-release-loop", ("--preset", "cpu", "--algorithms", "wmv,mbem", "--redundancy", "5",
                                        "--epoch-images", "all"), "bf16"),
    Folder("results/cifar10n", ("--preset", "cifar10n", "--annotations", CIFAR10N_CSV), "bf16", annotations=True),
    Folder("results/cpu-oracle", ("--preset", "cpu", "--algorithms", "oracle"), "bf16"),
    Folder("results/cpu-T2-prior", (*MBEM_R1, "--rounds", "1", "--class-prior"), "bf16", bootstrap="results/cpu"),
    # beyond the paper: MBEM's M-step corrected for the model's accuracy (docs/worker-estimates.md), before
    # T = 3 without q, as it asks whether MBEM can come within reach of the oracle at all
    Folder("results/cpu-one-coin", (*MBEM_R1, "--mbem-step", "one-coin"), "bf16", bootstrap="results/cpu"),
    Folder("results/cpu-T3", (*MBEM_R1, "--rounds", "2", "--no-class-prior"), "bf16", bootstrap="results/cpu"),
    # the one-coin step where it is cheap to try next: three labels per item, and real workers
    Folder("results/cpu-one-coin-r3", ("--preset", "cpu", "--algorithms", "mbem", "--redundancy", "3",
                                       "--mbem-step", "one-coin"), "bf16", bootstrap="results/cpu"),
    Folder("results/cifar10n-one-coin", ("--preset", "cifar10n", "--annotations", CIFAR10N_CSV, "--algorithms", "mbem",
                                         "--redundancy", "1", "--mbem-step", "one-coin"), "bf16",
           bootstrap="results/cifar10n", annotations=True),
    Folder("results/class-wise-gamma0.2", ("--preset", "cpu", "--worker-model", "class-wise"), "bf16"),
    # a coin per worker and class, where the one-coin step's assumption fails (class-wise workers) and
    # on real workers (docs/worker-estimates.md: it scored best offline on class-wise workers)
    Folder("results/class-wise-gamma0.2-per-class-coin", ("--preset", "cpu", "--worker-model", "class-wise",
                                                          "--algorithms", "mbem", "--redundancy", "1,3,5",
                                                          "--mbem-step", "per-class-coin"), "bf16",
           bootstrap="results/class-wise-gamma0.2"),
    Folder("results/cifar10n-per-class-coin", ("--preset", "cifar10n", "--annotations", CIFAR10N_CSV, "--algorithms",
                                               "mbem", "--redundancy", "1", "--mbem-step", "per-class-coin"), "bf16",
           bootstrap="results/cifar10n", annotations=True),
    # and where one-coin's assumption holds: does the per-class step keep its gain there?
    Folder("results/cpu-per-class-coin", (*MBEM_R1, "--mbem-step", "per-class-coin"), "bf16", bootstrap="results/cpu"),
    Folder("results/class-wise-gamma0.6", ("--preset", "cpu", "--worker-model", "class-wise", "--gamma", "0.6"),
           "bf16"),
    Folder("results/class-wise-gamma0.6-per-class-coin", (*CLASS_WISE_R1, "--gamma", "0.6", "--mbem-step",
                                                          "per-class-coin"), "bf16",
           bootstrap="results/class-wise-gamma0.6"),
    # its first cells were made in fp32 on an AVX2 CPU: a CPU without native bf16 advances it
    Folder("results/hammer-spammer-gamma0.6", ("--preset", "cpu", "--gamma", "0.6"), "fp32"),
    # does the one-coin step keep MBEM's lead where the bootstrap model is better (gamma 0.6)?
    Folder("results/hammer-spammer-gamma0.6-one-coin", (*MBEM_R1, "--gamma", "0.6", "--mbem-step", "one-coin"),
           "fp32", bootstrap="results/hammer-spammer-gamma0.6"),
    # the field's methods on results/cpu's labels and CIFAR-10N's, trained as bench/crowd_sweep.py chose
    # (docs/beyond-mbem.md); Crowd Layer and CoNAL once more for as many epochs as MBEM's two trainings
    Folder("results/field-cpu", ("--preset", "cpu", "--algorithms", "crowdlab,crowdlayer,conal", "--redundancy", "1,3",
                                 *CROWD), "bf16"),
    Folder("results/field-cifar10n", ("--preset", "cifar10n", "--annotations", CIFAR10N_CSV, "--algorithms",
                                      "crowdlayer,conal", "--redundancy", "1", *CROWD), "bf16", annotations=True),
    Folder("results/field-cpu-20-epochs", ("--preset", "cpu", "--algorithms", "crowdlayer,conal", "--redundancy", "1,3",
                                           "--epochs", "20", *CROWD), "bf16"),
    # is it the method or the longer schedule? One-coin MBEM's final training for 20 epochs too, on
    # results/cpu's 10-epoch WMV models (so 30 epochs of images in all, the field's 20 above)
    Folder("results/cpu-one-coin-20-epochs", ("--preset", "cpu", "--algorithms", "mbem", "--redundancy", "1,3",
                                              "--mbem-step", "one-coin", "--epochs", "20"), "bf16",
           bootstrap="results/cpu"),
    # and on CIFAR-10N's real labels at r = 1, where at 10 epochs both end-to-end methods lose to MV
    Folder("results/field-cifar10n-20-epochs", ("--preset", "cifar10n", "--annotations", CIFAR10N_CSV, "--algorithms",
                                                "crowdlayer,conal", "--redundancy", "1", "--epochs", "20", *CROWD),
           "bf16", annotations=True),
    # equal compute again once MBEM's final training has 20 epochs (10 + 20 = 30 epochs of images):
    # CoNAL, the field's lead at 20 epochs, once for 30 on the same labels
    Folder("results/field-cpu-30-epochs", ("--preset", "cpu", "--algorithms", "conal", "--redundancy", "1,3",
                                           "--epochs", "30", *CONAL), "bf16"),
    # three of CIFAR-10N's labels per item, so the advice covers real labels at r = 3 as it does
    # simulated ones: the field's methods (CROWDLAB among them) and the one-coin step
    Folder("results/field-cifar10n-r3", ("--preset", "cifar10n", "--annotations", CIFAR10N_CSV, "--algorithms",
                                         "crowdlab,crowdlayer,conal", "--redundancy", "3", *CROWD), "bf16",
           annotations=True),
    Folder("results/cifar10n-one-coin-r3", ("--preset", "cifar10n", "--annotations", CIFAR10N_CSV, "--algorithms",
                                            "mbem", "--redundancy", "3", "--mbem-step", "one-coin"), "bf16",
           bootstrap="results/cifar10n", annotations=True),
    # is CoNAL's separation term (unbounded, docs/beyond-mbem.md) what costs it on CIFAR-10N's 747
    # workers? The same cells without it: a diagnosis, not a setting chosen on the test set
    Folder("results/field-cifar10n-conal-no-separation", ("--preset", "cifar10n", "--annotations", CIFAR10N_CSV,
                                                          "--algorithms", "conal", "--redundancy", "1", *CONAL,
                                                          "--conal-separation", "0"), "bf16", annotations=True),
)


FIELD_NAMES = (("crowdlab", "CROWDLAB"), ("crowdlayer", "Crowd Layer"), ("conal", "CoNAL"))
# The folders of the field's methods and of the one-coin step, by (crowd, r); MV's and the release's
# MBEM's are results/cpu and results/cifar10n at every r.
FIELD = {("cpu", 1): "results/field-cpu", ("cpu", 3): "results/field-cpu", ("cifar10n", 1): "results/field-cifar10n",
         ("cifar10n", 3): "results/field-cifar10n-r3"}
ONE_COIN = {("cpu", 1): "results/cpu-one-coin", ("cpu", 3): "results/cpu-one-coin-r3",
            ("cifar10n", 1): "results/cifar10n-one-coin", ("cifar10n", 3): "results/cifar10n-one-coin-r3"}


def field_questions(bases):
    """(what, the field's cell, a baseline's) for each field method, crowd and r (CROWDLAB from r = 3:
    cleanlab refuses single labels), against each of `bases`: names among MV, the release's MBEM and
    one-coin MBEM."""
    baseline = {"MV": lambda crowd, r: (f"results/{crowd}", "mv", r),
                "the release's MBEM": lambda crowd, r: (f"results/{crowd}", "mbem", r),
                "one-coin MBEM": lambda crowd, r: (ONE_COIN[crowd, r], "mbem", r)}
    return tuple((f"{name} - {what}, {'CIFAR-10N ' if crowd == 'cifar10n' else ''}r={r}",
                  (FIELD[crowd, r], method, r), baseline[what](crowd, r))
                 for crowd in ("cpu", "cifar10n") for method, name in FIELD_NAMES for r in (1, 3)
                 if not (method == "crowdlab" and r == 1) for what in bases)


# The questions the folders answer, each a paired difference of test error seed by seed (the
# folders share their seeds' workers and labels): (what, (folder, algorithm, r), (folder, algorithm, r)).
QUESTIONS = (
    ("oracle r=1 - label-only EM r=3", ("results/cpu-oracle", "oracle", 1), ("results/cpu", "em", 3)),
    ("oracle r=1 - label-only EM r=5", ("results/cpu-oracle", "oracle", 1), ("results/cpu", "em", 5)),
    ("oracle r=1 - oracle r=3", ("results/cpu-oracle", "oracle", 1), ("results/cpu-oracle", "oracle", 3)),
    ("oracle r=1 - oracle r=5", ("results/cpu-oracle", "oracle", 1), ("results/cpu-oracle", "oracle", 5)),
    ("MBEM r=1 - oracle r=1", ("results/cpu", "mbem", 1), ("results/cpu-oracle", "oracle", 1)),
    ("T=2 with q - the release's MBEM (T=2), r=1", ("results/cpu-T2-prior", "mbem", 1), ("results/cpu", "mbem", 1)),
    ("T=3 with q - the release's MBEM, r=1", ("results/cpu-rounds", "mbem", 1), ("results/cpu", "mbem", 1)),
    ("T=3 without q - the release's MBEM, r=1", ("results/cpu-T3", "mbem", 1), ("results/cpu", "mbem", 1)),
    ("one-coin MBEM - the release's MBEM, r=1", ("results/cpu-one-coin", "mbem", 1), ("results/cpu", "mbem", 1)),
    ("one-coin MBEM r=1 - oracle r=1", ("results/cpu-one-coin", "mbem", 1), ("results/cpu-oracle", "oracle", 1)),
    ("one-coin MBEM r=1 - label-only EM r=3", ("results/cpu-one-coin", "mbem", 1), ("results/cpu", "em", 3)),
    ("one-coin MBEM r=1 - label-only EM r=5", ("results/cpu-one-coin", "mbem", 1), ("results/cpu", "em", 5)),
    ("one-coin MBEM - the release's MBEM, r=3", ("results/cpu-one-coin-r3", "mbem", 3), ("results/cpu", "mbem", 3)),
    ("one-coin MBEM r=3 - oracle r=3", ("results/cpu-one-coin-r3", "mbem", 3), ("results/cpu-oracle", "oracle", 3)),
    ("one-coin MBEM - label-only EM, r=3", ("results/cpu-one-coin-r3", "mbem", 3), ("results/cpu", "em", 3)),
    ("one-coin MBEM r=1 - one-coin MBEM r=3", ("results/cpu-one-coin", "mbem", 1),
     ("results/cpu-one-coin-r3", "mbem", 3)),
    ("one-coin MBEM - the release's MBEM, CIFAR-10N r=1", ("results/cifar10n-one-coin", "mbem", 1),
     ("results/cifar10n", "mbem", 1)),
    ("one-coin MBEM - MV, CIFAR-10N r=1", ("results/cifar10n-one-coin", "mbem", 1), ("results/cifar10n", "mv", 1)),
    *((f"one-coin MBEM - {what}, gamma 0.6 r=1", ("results/hammer-spammer-gamma0.6-one-coin", "mbem", 1),
       ("results/hammer-spammer-gamma0.6", base, 1)) for base, what in (("mbem", "the release's MBEM"), ("mv", "MV"))),
    *((f"per-class-coin MBEM - {what}, class-wise gamma {gamma} r=1",
       (f"results/class-wise-gamma{gamma}-per-class-coin", "mbem", 1), (f"results/class-wise-gamma{gamma}", base, 1))
      for gamma in ("0.2", "0.6") for base, what in (("mbem", "the release's MBEM"), ("mv", "MV"))),
    *((f"per-class-coin MBEM - the release's MBEM, class-wise gamma 0.2 r={r}",
       ("results/class-wise-gamma0.2-per-class-coin", "mbem", r), ("results/class-wise-gamma0.2", "mbem", r))
      for r in (3, 5)),
    ("per-class-coin MBEM r=1 - per-class-coin MBEM r=3, class-wise gamma 0.2",
     ("results/class-wise-gamma0.2-per-class-coin", "mbem", 1),
     ("results/class-wise-gamma0.2-per-class-coin", "mbem", 3)),
    *((f"per-class-coin MBEM r=1 - {what}", (f"results/{setting}-per-class-coin", "mbem", 1), other)
      for setting, what, other in (
          ("cpu", "the release's MBEM r=1", ("results/cpu", "mbem", 1)),
          ("cpu", "one-coin MBEM r=1", ("results/cpu-one-coin", "mbem", 1)),
          ("cpu", "oracle r=1", ("results/cpu-oracle", "oracle", 1)),
          ("cpu", "label-only EM r=3", ("results/cpu", "em", 3)),
          ("cpu", "label-only EM r=5", ("results/cpu", "em", 5)),
          ("cifar10n", "the release's MBEM, CIFAR-10N r=1", ("results/cifar10n", "mbem", 1)),
          ("cifar10n", "MV, CIFAR-10N r=1", ("results/cifar10n", "mv", 1)),
          ("cifar10n", "one-coin MBEM, CIFAR-10N r=1", ("results/cifar10n-one-coin", "mbem", 1)))),
    ("one-coin MBEM - the release's MBEM, CIFAR-10N r=3", (ONE_COIN["cifar10n", 3], "mbem", 3),
     ("results/cifar10n", "mbem", 3)),
    ("one-coin MBEM - MV, CIFAR-10N r=3", (ONE_COIN["cifar10n", 3], "mbem", 3), ("results/cifar10n", "mv", 3)),
    # the budget on real labels: one label per item against three, each method against itself
    *((f"{name} r=1 - {name} r=3, CIFAR-10N", (one, method, 1), (three, method, 3))
      for name, method, one, three in (("one-coin MBEM", "mbem", ONE_COIN["cifar10n", 1], ONE_COIN["cifar10n", 3]),
                                       *((name, method, FIELD["cifar10n", 1], FIELD["cifar10n", 3])
                                         for method, name in FIELD_NAMES[1:]))),
    # the field's methods against three baselines: MV, the release's MBEM, and MBEM with the one-coin
    # step (the best MBEM wherever both ran)
    *field_questions(("MV", "the release's MBEM", "one-coin MBEM")),
    *((f"CoNAL without its separation term - {what}, CIFAR-10N r=1",
       ("results/field-cifar10n-conal-no-separation", "conal", 1), base)
      for what, base in (("CoNAL", ("results/field-cifar10n", "conal", 1)), ("MV", ("results/cifar10n", "mv", 1)))),
    # 20 epochs: as many training images as MBEM's pipeline, a WMV model and MBEM's, 10 epochs each
    *((f"{name}, 20 epochs - {what}, r={r}", ("results/field-cpu-20-epochs", method, r), base)
      for method, name in FIELD_NAMES[1:] for r in (1, 3)
      for what, base in ((f"{name}, 10 epochs", ("results/field-cpu", method, r)),
                         ("the release's MBEM", ("results/cpu", "mbem", r)),
                         ("one-coin MBEM", (ONE_COIN["cpu", r], "mbem", r)),
                         ("one-coin MBEM, final training 20 epochs", ("results/cpu-one-coin-20-epochs", "mbem", r)))),
    *((f"{name}, 20 epochs - {what}, CIFAR-10N r=1", ("results/field-cifar10n-20-epochs", method, 1), base)
      for method, name in FIELD_NAMES[1:]
      for what, base in ((f"{name}, 10 epochs", ("results/field-cifar10n", method, 1)),
                         ("MV", ("results/cifar10n", "mv", 1)),
                         ("one-coin MBEM", (ONE_COIN["cifar10n", 1], "mbem", 1)))),
    *((f"one-coin MBEM, final training 20 epochs - one-coin MBEM, r={r}", ("results/cpu-one-coin-20-epochs", "mbem", r),
       (ONE_COIN["cpu", r], "mbem", r)) for r in (1, 3)),
    # the budget at equal compute: one label per item against three, CoNAL against itself
    *((f"CoNAL, {epochs} epochs r=1 - CoNAL, {epochs} epochs r=3", (folder, "conal", 1), (folder, "conal", 3))
      for epochs, folder in ((20, "results/field-cpu-20-epochs"), (30, "results/field-cpu-30-epochs"))),
    # 30 epochs: as many training images as one-coin MBEM's WMV model (10 epochs) and its 20-epoch final one
    *((f"CoNAL, 30 epochs - {what}, r={r}", ("results/field-cpu-30-epochs", "conal", r), base) for r in (1, 3)
      for what, base in (("one-coin MBEM, final training 20 epochs", ("results/cpu-one-coin-20-epochs", "mbem", r)),
                         ("CoNAL, 20 epochs", ("results/field-cpu-20-epochs", "conal", r)))),
)

# The same for the error of the workers' estimated accuracy (each cell's worker_accuracy_mae): how well
# the field's methods learn the workers beside MBEM, which learns them from its model's predictions.
# MV is left out: at r = 1 it has no second label to judge a worker by.
WORKER_QUESTIONS = field_questions(("the release's MBEM", "one-coin MBEM"))
MEASURES = (("test error", "test_error", "QUESTIONS"),
            ("workers' accuracy, mean absolute error", "worker_accuracy_mae", "WORKER_QUESTIONS"))


def folder_cells(folder):
    """A folder's cells as its results.json holds them ([] before it has any)."""
    path = os.path.join(ROOT, folder, "results.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)["cells"]


def compare(markdown=False):
    """Each question's paired difference, of test error (QUESTIONS) and of the workers' estimated
    accuracy (WORKER_QUESTIONS): mean, 95% t-interval, the seeds' differences; with `markdown`, as
    the rows of the docs' tables (a question not yet run is left out)."""
    from mbemlib.report import difference

    asked = [(label, key, globals()[name]) for label, key, name in MEASURES]
    cells = {folder: folder_cells(folder) for *_, questions in asked for _, *sides in questions
             for folder, _, _ in sides}  # each read once
    width = max(len(what) for *_, questions in asked for what, *_ in questions)

    def values(key, folder, algorithm, r):
        return {c["seed"]: c[key] for c in cells[folder]
                if c["algorithm"] == algorithm and c["redundancy"] == r and c.get(key) is not None}

    for i, (label, key, questions) in enumerate(asked):
        if markdown:
            print(("\n" if i else "") + f"| difference ({label}) | mean | 95% interval | seeds |\n|---|---|---|---|")
        else:
            print(("\n" if i else "") + f"{f'question ({label}, seed by seed)':{width}} {'seeds':>5} {'mean':>8}  "
                  f"{'95% interval':18}  differences")
        for what, a, b in questions:
            first, second = values(key, *a), values(key, *b)
            seeds = sorted(first.keys() & second.keys())
            if not seeds:
                if not markdown:
                    print(f"{what:{width}} {'-':>5}  not run yet ({a[0] if not first else b[0]})")
                continue
            d = difference(seeds, [first[s] - second[s] for s in seeds])
            interval = "" if d["ci_low"] is None else f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
            differences = " ".join(f"{x:+.4f}" for x in d["differences"])
            if markdown:
                print(f"| {what} | {d['mean']:+.4f} | {interval} | {differences} |")
            else:
                print(f"{what:{width}} {len(seeds):>5} {d['mean']:+8.4f}  {interval:18}  {differences}")
    return 0


def native_problem(precision, gpus):
    """Why this machine cannot train in `precision` at full speed, or None (the trainer's own check)."""
    if precision != "bf16":
        return None
    import resnet_torch

    try:
        resnet_torch.resolve_precision(precision, gpus)
    except ValueError as err:
        return str(err).removeprefix("--precision bf16: ")
    return None


def prepare(folder):
    """What a folder's command needs first: the copied WMV bootstraps, or CIFAR-10N's label CSV.
    Returns why it cannot run, or None."""
    if folder.bootstrap:
        target = os.path.join(ROOT, folder.out, "bootstrap")
        os.makedirs(target, exist_ok=True)
        for path in (p for r in folder.redundancies()
                     for p in glob.glob(os.path.join(ROOT, folder.bootstrap, "bootstrap", f"wmv-seed*-r{r}-*.npz"))):
            if not os.path.exists(os.path.join(target, os.path.basename(path))):
                shutil.copy2(path, target)
    if folder.annotations and not os.path.exists(os.path.join(ROOT, CIFAR10N_CSV)):
        if not os.path.exists(os.path.join(ROOT, CIFAR10N)):
            return f"no CIFAR-10N labels at {CIFAR10N}"
        made = subprocess.run([sys.executable, "cifar10n.py", CIFAR10N, "--items", "jpeg", "--out", CIFAR10N_CSV],
                              cwd=ROOT, capture_output=True, text=True)
        if made.returncode != 0:
            return f"cifar10n.py could not write {CIFAR10N_CSV}: {(made.stderr.strip() or '?').splitlines()[-1]}"
    return None


def cells_done(folder):
    path = os.path.join(ROOT, folder.out, "results.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return len(json.load(f)["cells"])


UNIT_SECONDS = {"h": 3600, "min": 60, "s": 1}


def dry_run_estimate(stdout):
    """(cells left, seconds) from MBEM.py --dry-run's output: its cell lines and its last line's time
    (printed to a tenth of an hour, a minute or a second); seconds 0 when nothing is left."""
    left = sum(line.startswith("  cell ") for line in stdout.splitlines())
    found = re.search(r"about (\S+) (h|min|s), evaluation not counted", stdout)
    return left, float(found.group(1)) * UNIT_SECONDS[found.group(2)] if found and left else 0.0


def recorded_speed(precision):
    """The median training speed (img/s) of this machine's cells in `precision` over the queue's
    folders, or None: what the status assumes while a training runs, as timing batches beside it
    would slow it and time them slow."""
    here = store.machine()
    speeds = [c["train_img_per_s"] for folder in QUEUE for c in folder_cells(folder.out)
              if c.get("precision") == precision and c.get("machine") == here and c.get("train_img_per_s")]
    return float(np.median(speeds)) if speeds else None


def estimate(folder, source, extra, speed=None):
    """(cells left, seconds left by MBEM.py --dry-run's estimate here, at `speed` img/s if given),
    or (None, why not)."""
    extra = (*extra, "--dry-run", *(("--speed", f"{speed:.0f}") if speed else ()))
    result = subprocess.run(folder.command(source, extra), cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        return None, result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "dry run failed"
    return dry_run_estimate(result.stdout)


def status(source, gpus, extra):
    width = max(len(folder.out) for folder in QUEUE)
    training = {folder.out: who for folder in QUEUE if (who := store.in_use(os.path.join(ROOT, folder.out)))}
    for out, who in training.items():
        print(f"note: {out} is in training now ({who}); the times below are at this machine's recorded speed "
              "per precision where it has one, not timed beside it")
    print(f"{'folder':{width}} {'cells':>9}  precision  time left here")
    total, skipped, untimed, speeds = 0.0, 0, 0, {}
    for folder in QUEUE:
        done = cells_done(folder)
        problem = native_problem(folder.precision, gpus) or prepare(folder)
        if problem:
            skipped += 1
            print(f"{folder.out:{width}} {done:>5} of ?  {folder.precision:9}  skipped here: {problem}")
            continue
        if folder.precision not in speeds:  # each precision's cells read once
            speeds[folder.precision] = recorded_speed(folder.precision) if training else None
        speed = speeds[folder.precision]
        # beside a training, a precision never recorded here is not timed: any speed gives the cells left
        left, seconds = estimate(folder, source, extra, speed or (1.0 if training else None))
        if left is None:
            print(f"{folder.out:{width}} {done:>5} of ?  {folder.precision:9}  {seconds}", flush=True)
            continue
        if training and not speed:
            when = f"not timed beside a training (no {folder.precision} cell made here yet)" if left else "nothing left"
            untimed += bool(left)
        else:
            total += seconds
            when = f"about {format_seconds(seconds)}" if left else "nothing left"
        when += " (in training now)" if folder.out in training else ""
        print(f"{folder.out:{width}} {f'{done:>5} of {done + left}':>9}  {folder.precision:9}  {when}", flush=True)
    print(f"in all, about {format_seconds(total)} here" + (f", {untimed} folders not timed" if untimed else "")
          + (f", {skipped} folders skipped here" if skipped else ""))
    if not training:
        print("(each estimate times a few batches now: a training running beside it, or any other load, lengthens "
              "it)")
    return 0


def run_queue(source, gpus, extra):
    """Each folder in turn; a skipped or failed folder is named and the queue goes on. Exit status 0
    when every folder that could run here ran to the end, else 1."""
    failed = []
    for folder in QUEUE:
        problem = native_problem(folder.precision, gpus) or prepare(folder)
        if problem:
            print(f"skipped {folder.out} ({folder.precision}): {problem}", flush=True)
            continue
        print(f"== {folder.out} ({folder.precision})", flush=True)
        result = subprocess.run(folder.command(source, extra), cwd=ROOT)
        if result.returncode == 130:
            print("interrupted: finished cells are saved; run the same command again to resume", file=sys.stderr)
            return 130
        if result.returncode != 0:
            failed.append(folder.out)
            print(f"{folder.out} stopped with exit status {result.returncode}; going on to the next folder",
                  file=sys.stderr, flush=True)
    figure = subprocess.run([sys.executable, "paper_figure.py"], cwd=ROOT)
    if failed:
        print(f"not finished: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed or figure.returncode else 0


def main(argv=None):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = p.add_mutually_exclusive_group()
    action.add_argument("--status", action="store_true",
                        help="per folder: cells done of all, its precision, and the time left on this machine by "
                             "MBEM.py --dry-run's estimate (a few timed batches each); trains nothing, but first "
                             "prepares each folder as a run would (copies in the saved WMV models it starts from, "
                             "writes CIFAR-10N's label CSV), so the estimate does not count those trainings")
    action.add_argument("--list", action="store_true", help="print each folder's command and exit")
    action.add_argument("--compare", action="store_true",
                        help="the questions the folders answer, each a paired difference of test error over the "
                             "seeds both folders have, from their results.json; trains nothing")
    p.add_argument("--markdown", action="store_true",
                   help="with --compare: the answered questions as the rows of a Markdown table, as the docs quote "
                        "them")
    p.add_argument("--source", default=CIFAR, help="CIFAR-10 as a folder or .tar.gz of JPEGs (default: %(default)s)")
    p.add_argument("--gpus", type=gpu_list, default=[], help="GPU ids for every command, e.g. 0 (default: the CPU)")
    args = p.parse_args(argv)
    extra = ("--gpus", ",".join(map(str, args.gpus))) if args.gpus else ()
    source = os.path.relpath(os.path.abspath(args.source), ROOT)  # the commands run in the checkout
    if args.markdown and not args.compare:
        p.error("--markdown goes with --compare")
    if args.compare:
        return compare(args.markdown)
    if args.list:
        for folder in QUEUE:
            print("python " + " ".join(folder.command(source, extra)[1:]))
        return 0
    if not os.path.exists(os.path.join(ROOT, source)):
        p.error(f"--source {args.source}: no such folder or archive (CIFAR-10 as JPEGs: ../shared/data beside "
                "the checkout, or your own copy)")
    return (status if args.status else run_queue)(source, args.gpus, extra)


if __name__ == "__main__":
    sys.exit(main())
