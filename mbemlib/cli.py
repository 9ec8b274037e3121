"""Command-line checks shared by MBEM.py and aggregation.py: every flag is checked before any work
starts, and a bad one gets one line on stderr and exit status 2 (argparse's convention), never a
traceback after an hour of computing."""

import argparse
import math
import os


def number(kind, low=None, high=None, low_open=False):
    """An argparse type: `kind` (int or float), finite, within [low, high] (or (low, high] when
    low_open). The message names the range, argparse names the flag."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"not {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {range_text(low, high, low_open)}, not {text}")
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid <name> value" message
    return parse


def range_text(low, high, low_open):
    if high is None:
        return f"{'above' if low_open else 'at least'} {low}"
    return f"in {'(' if low_open else '['}{low}, {high}]"


def csv_list(kind, low=None):
    """An argparse type: a comma-separated list of `kind`, each at least `low`."""
    item = number(kind, low) if kind in (int, float) else kind

    def parse(text):
        values = [v.strip() for v in text.split(",")]
        if not all(values):
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}")
        try:
            return [item(v) for v in values]
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s: {err}") from None

    return parse


def output_problem(path, folder=False):
    """Why `path` cannot be written, or None: a file to write (its folder must exist), or with
    folder=True a folder to create or add to (made with its parents). Checked up front, so a run
    never computes for an hour and then fails to save."""
    path = os.path.abspath(path)
    if folder and os.path.exists(path) and not os.path.isdir(path):
        return f"{path} is a file, not a folder"
    if not folder and os.path.isdir(path):
        return f"{path} is a folder, not a file"
    target = path if folder else os.path.dirname(path)
    existing = target
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is a file, not a folder"
    if not folder and existing != target:
        return f"{target}: no such folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


class Parser(argparse.ArgumentParser):
    """argparse with one line per error (no usage dump): `<prog>: error: <message> (see --help)`."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class InputError(ValueError):
    """Bad input data (a label file, a dataset): one line on stderr, exit status 2."""


class RunError(Exception):
    """A problem with the user's data or output folder found during a run: one line on stderr, exit status 2."""


INSTALL = {  # what to do when a framework a run needs is not installed
    "mxnet": "--backend mxnet (the default) needs MXNet 1.9.1, which needs Python 3.11 and numpy < 1.24: `make "
             "setup` installs it; or pass --backend torch",
    "torch": "--backend torch (and --dataset imagenet's loader) needs PyTorch: `make setup` or `make setup-torch` "
             "installs it, or pip install torch==2.13.0+cpu (a GPU: the CUDA build, docs/backends.md)",
}


def format_seconds(seconds):
    """3.2 h, 41 min or 12 s."""
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min" if seconds >= 60 else \
        f"{seconds:.0f} s"
