"""What a run of MBEM.py keeps on disk, written atomically so that a killed run resumes:

    <out>/results.json                       the settings, every finished cell, the provenance
    <out>/bootstrap/wmv-seed<s>-r<r>-n<n>.npz  the WMV model's predicted classes, MBEM's start
    <out>/models/<cell>.pt or .params(.json)   each cell's final model (the trainer's load_model reads it)
    <out>/predictions/<cell>.csv               that model's predictions on the images the cell trained on
    <out>/labels/<cell>-*.csv                  with real labels: posteriors and confusions

where <cell> is <algorithm>-seed<s>-r<r>.
"""

import atexit
import fcntl
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from importlib import metadata

import numpy as np

from mbemlib import ROOT
from mbemlib.atomic import UMASK, atomic_write
from mbemlib.cli import RunError
from mbemlib.label_files import confusions_csv, posterior_csv
from mbemlib.settings import NOT_RESULTS, Config, comparable


def environment():
    """The git commit, the versions of the packages that compute, and the CPU the run had: read
    from package metadata, so neither framework is imported just to be named."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=ROOT).stdout.strip() or None
    except OSError:
        commit = None
    versions = {}
    for name in ("mxnet", "torch", "numpy", "scipy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return commit, versions, machine()


# The code a trained model depends on, by path from the checkout's root: both trainers, every
# module they import (tests/test_layout.py checks it), and the ImageNet images' decoding.
TRAINER_FILES = ("resnet.py", "resnet_torch.py", "mbemlib/pipeline.py", "mbemlib/crowd_methods.py", "mbemlib/atomic.py",
                 "mbemlib/imagenet.py")


def trainer_digest():
    """A digest of the trainer's code as it is now (TRAINER_FILES): part of every checkpoint's key,
    so that a checkpoint written by other code is not resumed."""
    h = hashlib.sha1()
    for name in TRAINER_FILES:
        with open(os.path.join(ROOT, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def trainer_changes(commit):
    """The trainer's files that differ between `commit` and this checkout (its working tree
    included): [] when none, None when git cannot tell (no git, or a commit this clone lacks)."""
    try:
        result = subprocess.run(["git", "diff", "--name-only", commit, "--", *TRAINER_FILES], capture_output=True,
                                text=True, cwd=ROOT)
    except OSError:
        return None
    return result.stdout.split() if result.returncode == 0 else None


def resume_warning(results, out):
    """A warning line when a results folder resumed was written at a commit whose trainer differs
    from this checkout's, or None."""
    commit = results.get("commit")
    changed = trainer_changes(commit) if commit else []
    if changed == []:
        return None
    what = "git cannot tell whether the trainer changed" if changed is None else \
        f"the trainer has changed since ({', '.join(changed)})"
    return (f"warning: {out}/results.json was written at commit {commit[:7]} and {what}: cells trained now may not "
            "compare with the saved ones")


# The CPU flags that decide a CPU run's speed and numerics: bf16 is native with avx512_bf16 or
# amx_bf16 and emulated (slow, and rounded differently) without; one results folder may be made on several.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_info(text):
    """(model name, the CPU_FLAGS present) from the text of /proc/cpuinfo; (None, []) where absent."""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return fields.get("model name"), [f for f in CPU_FLAGS if f in flags]


def machine():
    """The machine a run (and each of its cells) ran on: CPU model, its flags of CPU_FLAGS, cores."""
    try:
        with open("/proc/cpuinfo") as f:
            model, flags = cpu_info(f.read().split("\n\n")[0])
    except OSError:
        model, flags = None, []
    return {"cpu": model, "cpu_flags": flags, "cores": os.cpu_count()}


def write_json(path, obj):
    atomic_write(path, json.dumps(obj, indent=1).encode())


def check_writable(out):
    """Make `out` and write a file in it, then remove what was made: a folder that cannot take
    results (under /proc, a full disk, a read-only mount) fails here, before any training, and
    nothing is left behind."""
    made, path = [], os.path.abspath(out)
    while not os.path.exists(path):
        made.append(path)
        path = os.path.dirname(path)
    probe = os.path.join(out, ".mbem-write-test")
    try:
        for folder in reversed(made):
            os.mkdir(folder)
        atomic_write(probe, b"")
        os.remove(probe)
    except OSError as err:
        raise RunError(f"--out {out}: cannot write there ({err.strerror or err}); choose another --out") from err
    finally:
        for folder in made:  # deepest first
            try:
                os.rmdir(folder)
            except OSError:
                pass


LOCK = ".mbem.lock"


def hold(out):
    """Hold the folder `out` for this run until the process ends, or raise RunError naming the
    run that holds it. The hold is an flock on out/.mbem.lock, which the kernel (or, on a shared
    NFS disk, the lock server) drops when its process dies however it dies, so a lock left by a
    killed run is free and taken over; the file names its holder (process, host, command), and
    one left non-empty is the note that a run ended without finishing. Returns that note, or None."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = lock_holder(fd)
        os.close(fd)
        raise RunError(f"{out} is in use by another run ({holder}): wait for it to end, or use another --out") \
            from None
    except OSError as err:  # a filesystem without locks (some network and FUSE mounts): run, and say so
        os.close(fd)
        return f"warning: {out} cannot be locked here ({err.strerror or err}): nothing stops a second run on it"
    left = lock_holder(fd)
    os.ftruncate(fd, 0)
    command = " ".join([os.path.basename(sys.executable), *sys.argv])
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                              "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
    HELD.append(fd)  # open for the rest of the process: closing it would let the hold go
    atexit.register(os.ftruncate, fd, 0)  # a clean end empties the file; a killed run leaves its name there
    return f"note: {out} was left by a run that did not finish ({left}); this run takes it over" if left else None


HELD = []


def in_use(out):
    """The run holding the folder `out` now, in words, or None. Read from the lock file without
    taking the lock (a run starting that instant must not find it taken): a name left there whose
    process has ended on this host is a killed run's, not a holder; one from another host cannot
    be checked from here and counts as holding it."""
    try:
        with open(os.path.join(out, LOCK)) as f:
            who = named_run(f.read())
    except OSError:
        return None
    if who is None:
        return None
    if who["host"] == socket.gethostname():
        try:
            os.kill(who["pid"], 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, another user's
            pass
    return described(who)


def lock_holder(fd):
    """The run named in a lock file, in words; None for an empty one."""
    text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    if not text:
        return None
    who = named_run(text)
    return described(who) if who else f"its lock file says {text[:200]!r}"


def named_run(text):
    """The run a lock file names ({pid, host, started, command}), or None."""
    try:
        who = json.loads(text)
    except ValueError:
        return None
    return who if isinstance(who, dict) and {"pid", "host", "started", "command"} <= who.keys() else None


def described(who):
    return f"process {who['pid']} on {who['host']}, started {who['started']}: {who['command']}"


def save(results, out):
    """results.json after each cell, atomically; a failed write (a full disk, a folder made read-only)
    stops the run with one line, and every cell written before is still there."""
    path = os.path.join(out, "results.json")
    try:
        os.makedirs(out, exist_ok=True)  # made at the first finished cell: a run refused earlier leaves nothing
        write_json(path, results)
    except OSError as err:
        kept = "the cells finished before this one are saved" if len(results["cells"]) > 1 else "no cell was saved"
        raise RunError(f"cannot write {path} ({err.strerror or err}): {kept}; make room (or choose another --out) "
                       "and run the same command to resume") from err


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
    # The precision is checked against the cells themselves once the trainer resolves it (MBEM.py:
    # precision_problem): a folder's config may say auto, which each machine resolves its own way.
    current = comparable(config)
    changed = sorted(k for k in saved.keys() | current.keys() if k != "precision" and saved.get(k) != current.get(k))
    if changed:
        raise RunError(f"{path} was made with a different config ({', '.join(changed)} differ); "
                       "use another --out or remove it")
    results["config"] = asdict(config)
    return results


def precision_problem(results, precision):
    """Why a run in `precision` must not add cells to `results`, or None: one folder, one precision
    (bf16 and fp32 round differently, so their cells are not repeats of one experiment)."""
    made = sorted({c.get("precision") for c in results["cells"]} - {None})
    if not made or made == [precision]:
        return None
    return (f"{results['config']['out']} holds {' and '.join(made)} cells and this run trains in {precision}: "
            f"pass --precision {made[0]} (one folder, one precision), or use another --out")


def digest(array):
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def labels_digest(ann):
    return hashlib.sha1(b"".join(np.ascontiguousarray(a, np.int64).tobytes()
                                 for a in (ann.items, ann.workers, ann.labels))).hexdigest()


def bootstrap_path(out, seed, r, n):
    return os.path.join(out, "bootstrap", f"wmv-seed{seed}-r{r}-n{n}.npz")


def save_bootstrap(path, probs, ann):
    """The WMV model's predicted classes (what MBEM starts from) and its probabilities on the same
    items (n x K in float16: for worker estimators that use more than the argmax, bench/targets.py),
    with a digest of the labels they belong to."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, predicted=probs.argmax(axis=1).astype(np.int32),
                        probabilities=probs.astype(np.float16), labels_digest=labels_digest(ann))
    atomic_write(path, buffer.getvalue())


def load_bootstrap(path, ann):
    """The predicted classes saved by save_bootstrap for exactly these labels, or None (missing,
    unreadable, or for other labels: then MBEM retrains the WMV model rather than trust it)."""
    try:
        with np.load(path) as f:
            predicted, saved_digest = f["predicted"], str(f["labels_digest"])
    except (OSError, ValueError, KeyError):
        return None
    if saved_digest != labels_digest(ann) or predicted.shape != (ann.n,) or not (0 <= predicted).all() \
            or not (predicted < ann.K).all():
        return None
    return predicted.astype(np.int64)


def bootstrap_probabilities(path):
    """The probabilities a bootstrap file holds (float32), or None: files written before they were
    kept have the predicted classes only."""
    with np.load(path) as f:
        return f["probabilities"].astype(np.float32) if "probabilities" in f else None


def save_model(trainer, model, out, name, meta):
    """<out>/models/<name>.<ext>: the cell's final model with what rebuilds it (`meta`: classes,
    depth, ...); trainer.load_model(path) reads it back."""
    folder = os.path.join(out, "models")
    os.makedirs(folder, exist_ok=True)
    trainer.save_model(model, os.path.join(folder, name + trainer.MODEL_SUFFIX), meta)


def write_predictions(out, name, item_names, classes, probs):
    """<out>/predictions/<name>.csv: item,label,p_<class>... for every image the cell trained on."""
    folder = os.path.join(out, "predictions")
    os.makedirs(folder, exist_ok=True)
    atomic_write(os.path.join(folder, f"{name}.csv"), posterior_csv(probs, item_names, classes))


def write_labels(out, name, item_names, classes, targets, confusions=None, worker_names=None):
    """With real labels: the posterior of every training item and each worker's confusion matrix,
    as the aggregation command line writes them."""
    folder = os.path.join(out, "labels")
    os.makedirs(folder, exist_ok=True)
    atomic_write(os.path.join(folder, f"{name}-posterior.csv"), posterior_csv(targets, item_names, classes))
    if confusions is not None:
        atomic_write(os.path.join(folder, f"{name}-workers.csv"), confusions_csv(confusions, worker_names, classes))
