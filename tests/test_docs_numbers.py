"""The test errors quoted in "Which method to train with" (README.md and docs/beyond-mbem.md) are
the committed cells' means over seeds: a folder rerun or a cell added moves the number in the
results, and this test says which prose went stale."""

import csv
import functools
import os
import re
import statistics

import pytest

import reproduce
from conftest import ROOT

# Each table's row: its label's start and (crowd, r); each column: a method, its algorithm and the
# folder holding its cells at (crowd, r) (reproduce.py's tables; absent: not run there).
ROWS = (("hammer-spammer", "r = 1", ("cpu", 1)), ("hammer-spammer", "r = 3", ("cpu", 3)),
        ("CIFAR-10N", "r = 1", ("cifar10n", 1)), ("CIFAR-10N", "r = 3", ("cifar10n", 3)))
SETTINGS = [setting for *_, setting in ROWS]
COLUMNS = (
    ("MV", "mv", {(c, r): f"results/{c}" for c, r in SETTINGS}),
    ("the release's MBEM", "mbem", {(c, r): f"results/{c}" for c, r in SETTINGS}),
    ("one-coin MBEM", "mbem", {s: reproduce.ONE_COIN[s] for s in SETTINGS}),
    ("CROWDLAB", "crowdlab", {s: reproduce.FIELD[s] for s in SETTINGS if s[1] > 1}),  # cleanlab refuses r = 1
    *((name, method, {s: reproduce.FIELD[s] for s in SETTINGS}) for method, name in reproduce.FIELD_NAMES[1:]),
)


@functools.cache  # the tables quote a folder's cells many times over
def measured(folder, algorithm, r):
    """Mean and sample standard deviation of the folder's test errors for (algorithm, r), over seeds."""
    with open(os.path.join(ROOT, folder, "results.csv")) as f:
        errors = [float(row["test_error"]) for row in csv.DictReader(f)
                  if row["algorithm"] == algorithm and int(row["redundancy"]) == r]
    assert len(errors) == 3, (folder, algorithm, r, len(errors))
    return statistics.mean(errors), statistics.stdev(errors)


def tables(path, title):
    """The markdown tables in the section `## title` of a file, each a list of rows (lists of cells),
    its header first."""
    with open(os.path.join(ROOT, path)) as f:
        text = f.read()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    found, rows = [], []
    for line in section.splitlines() + [""]:
        if line.startswith("|"):
            if not line.startswith("|---"):
                rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            found, rows = found + [rows], []
    return found


def section_tables(path, title):
    """Rows (as lists of cells) of all the markdown tables in the section `## title` of a file."""
    return [row for table in tables(path, title) for row in table]


def quoted(path, title):
    """{(method, (crowd, r)): the cell's text} from the section's first table whose header names the
    methods: README's has a column per method, the docs' a row per method."""
    rows = section_tables(path, title)
    methods = [m for m, _, _ in COLUMNS]
    header = rows[0]
    if header[1] == "MV":  # README: a column per method, a row per setting
        table = {}
        for row in rows[1:]:
            setting = next(s for start, r, s in ROWS if row[0].startswith(start) and row[0].endswith(r))
            for method, cell in zip(header[1:], row[1:], strict=True):
                table[(method, setting)] = cell
        return table
    settings = [next(s for start, r, s in ROWS if h.startswith(start) and h.endswith(r)) for h in header[1:]]
    table = {}
    for row in rows[1:]:
        name = "MV" if row[0] == "majority vote" else row[0]
        method = next((m for m in methods if name.startswith(m)), None)
        if method is None:
            break  # the next table's header: past the first table
        for setting, cell in zip(settings, row[1:], strict=True):
            table[(method, setting)] = cell
    return table


@pytest.mark.parametrize("path", ["README.md", "docs/beyond-mbem.md"])
def test_which_method_tables_quote_the_committed_cells(path):
    table = quoted(path, "Which method to train with")
    checked = 0
    for method, algorithm, folders in COLUMNS:
        for _, _, setting in ROWS:
            cell = table[(method, setting)]
            if setting not in folders:
                assert not re.search(r"\d\.\d{3}", cell), (path, method, setting, cell)
                continue
            mean, std = measured(folders[setting], algorithm, setting[1])
            numbers = [float(x) for x in re.findall(r"\d\.\d{3}", cell)]
            assert numbers[0] == pytest.approx(mean, abs=5e-4), (path, method, setting)
            if len(numbers) > 1:  # mean ± sample standard deviation
                assert numbers[1] == pytest.approx(std, abs=5e-4), (path, method, setting)
            checked += 1
    assert checked == 22  # six methods in four settings, less CROWDLAB's two with single labels


def cells(folder):
    """A committed folder's cells (reproduce.folder_cells) by (algorithm, seed, r)."""
    return {(c["algorithm"], c["seed"], c["redundancy"]): c for c in reproduce.folder_cells(folder)}


@pytest.mark.parametrize("folder, finals, count", [
    ("results/field-cpu-20-epochs", (reproduce.ONE_COIN["cpu", 1], reproduce.ONE_COIN["cpu", 3]), 12),
    ("results/field-cpu-30-epochs", ("results/cpu-one-coin-20-epochs",), 6)])
def test_the_equal_compute_trainings_see_as_many_images_as_mbems_two(folder, finals, count):
    """The docs' equal compute: each end-to-end cell made as many updates as one-coin MBEM's final
    training and the WMV training it bootstraps from (results/cpu's 10 epochs, on the same items)
    together: two 10-epoch trainings against 20 epochs, 10 + 20 against 30."""
    wmv = cells("results/cpu")
    final = {key: cell for path in finals for key, cell in cells(path).items()}
    checked = 0
    for (method, seed, r), cell in cells(folder).items():
        mbem, bootstrap = final["mbem", seed, r], wmv["wmv", seed, r]
        assert bootstrap["n"] == mbem["n"] == cell["n"] and cell["epochs"] == bootstrap["epochs"] + mbem["epochs"]
        per_epoch = mbem["history"][-1]["updates"] / mbem["epochs"]
        assert cell["history"][-1]["updates"] == per_epoch * cell["epochs"], (method, seed, r)
        checked += 1
    assert checked == count  # each method at r = 1 and 3, three seeds


def end_to_end(twenty_epochs):
    """Each end-to-end method's row: one 20-epoch training, its 10-epoch training's mean in brackets."""
    return tuple((f"{name}, one training of 20", (twenty_epochs, method), (reproduce.FIELD, method))
                 for method, name in reproduce.FIELD_NAMES[1:])


# The equal-compute tables: each its header's start, the settings of its columns, and its rows by
# their label's start, each with the (folder, algorithm) of every mean its cells quote, the first as
# mean ± std and the rest in brackets. A folder is a path, or reproduce.py's map from a setting to
# its folder (ONE_COIN, FIELD: 10-epoch trainings). A label takes the first row whose start it has,
# so a longer label comes before its prefix.
EQUAL_COMPUTE_TABLES = (
    ("equal compute, seeds 0-2", (("cpu", 1), ("cpu", 3)), (
        *end_to_end("results/field-cpu-20-epochs"),
        ("CoNAL, one training of 30", ("results/field-cpu-30-epochs", "conal"),
         ("results/field-cpu-20-epochs", "conal")),
        ("one-coin MBEM, a 20-epoch final training", ("results/cpu-one-coin-20-epochs", "mbem")),
        ("one-coin MBEM", (reproduce.ONE_COIN, "mbem")),  # two 10-epoch trainings
    )),
    ("equal compute, CIFAR-10N r = 1", (("cifar10n", 1),), (
        *end_to_end("results/field-cifar10n-20-epochs"),
        ("one-coin MBEM", (reproduce.ONE_COIN, "mbem")),
        ("majority vote", ("results/cifar10n", "mv")),
    )),
)


@pytest.mark.parametrize("title, settings, spec", EQUAL_COMPUTE_TABLES, ids=[t[0] for t in EQUAL_COMPUTE_TABLES])
def test_the_equal_compute_tables_quote_the_committed_cells(title, settings, spec):
    """docs/beyond-mbem.md's equal-compute tables: every row and column, each mean (± std for the
    first) the mean over seeds of the folder the spec names."""
    table = next(t for t in tables("docs/beyond-mbem.md", "Which method to train with") if t[0][0].startswith(title))
    assert len(table[0]) == 1 + len(settings), table[0]
    checked = set()
    for row in table[1:]:
        label, *sources = next(s for s in spec if row[0].startswith(s[0]))
        for setting, cell in zip(settings, row[1:], strict=True):
            numbers = [float(x) for x in re.findall(r"\d\.\d{3}", cell)]
            assert len(numbers) == len(sources) + 1, (label, setting, cell)  # mean ± std, then means
            quoted_numbers = [numbers[:2], *([n] for n in numbers[2:])]
            for (folder, algorithm), quoted_here in zip(sources, quoted_numbers, strict=True):
                where = folder if isinstance(folder, str) else folder[setting]
                for number, actual in zip(quoted_here, measured(where, algorithm, setting[1]), strict=False):
                    assert number == pytest.approx(actual, abs=5e-4), (label, setting, where)
        checked.add(label)
    assert checked == {label for label, *_ in spec}  # every row the spec names is in the table
