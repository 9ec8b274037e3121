"""The test errors quoted in "Which method to train with" (README.md and docs/beyond-mbem.md) are
the committed cells' means over seeds: a folder rerun or a cell added moves the number in the
results, and this test says which prose went stale."""

import csv
import os
import re
import statistics

import pytest

import reproduce
from conftest import ROOT

# Each table's row: its label's start and (crowd, r); each column: a method, its algorithm and the
# folder holding its cells at (crowd, r) (reproduce.py's tables; absent: not run there).
ROWS = (("hammer-spammer", "r = 1", ("cpu", 1)), ("hammer-spammer", "r = 3", ("cpu", 3)),
        ("CIFAR-10N", "r = 1", ("cifar10n", 1)))
SETTINGS = [setting for *_, setting in ROWS]
COLUMNS = (
    ("MV", "mv", {(c, r): f"results/{c}" for c, r in SETTINGS}),
    ("the release's MBEM", "mbem", {(c, r): f"results/{c}" for c, r in SETTINGS}),
    ("one-coin MBEM", "mbem", {s: reproduce.ONE_COIN[s] for s in SETTINGS}),
    ("CROWDLAB", "crowdlab", {("cpu", 3): reproduce.FIELD["cpu", 3]}),  # cleanlab refuses single labels
    *((name, method, {s: reproduce.FIELD[s] for s in SETTINGS}) for method, name in reproduce.FIELD_NAMES[1:]),
)


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
    assert checked == 16  # six methods in three settings, less CROWDLAB's two with single labels


def cells(folder):
    """A committed folder's cells (reproduce.folder_cells) by (algorithm, seed, r)."""
    return {(c["algorithm"], c["seed"], c["redundancy"]): c for c in reproduce.folder_cells(folder)}


def test_the_20_epoch_trainings_see_as_many_images_as_mbems_two():
    """The docs' equal compute: each 20-epoch Crowd Layer and CoNAL cell made as many updates as
    one-coin MBEM's final training and the WMV training it bootstraps from (results/cpu's, of as
    many epochs on the same items) together."""
    wmv = cells("results/cpu")
    final = {**cells(reproduce.ONE_COIN["cpu", 1]), **cells(reproduce.ONE_COIN["cpu", 3])}
    checked = 0
    for (method, seed, r), cell in cells("results/field-cpu-20-epochs").items():
        mbem = final["mbem", seed, r]
        assert wmv["wmv", seed, r]["epochs"] == mbem["epochs"] and wmv["wmv", seed, r]["n"] == mbem["n"] == cell["n"]
        assert cell["history"][-1]["updates"] == 2 * mbem["history"][-1]["updates"], (method, seed, r)
        checked += 1
    assert checked == 12  # two methods, r = 1 and 3, three seeds


# The equal-compute table's rows by their label's start: the folder of the mean ± std quoted first,
# and for the end-to-end methods the 10-epoch folder of the mean in brackets (reproduce.FIELD's).
EQUAL_COMPUTE_ROWS = (
    ("one-coin MBEM, a 20-epoch final training", "mbem", "results/cpu-one-coin-20-epochs", False),
    ("one-coin MBEM", "mbem", None, False),  # two 10-epoch trainings: reproduce.ONE_COIN's folders
    *((f"{name}, one training of 20", method, "results/field-cpu-20-epochs", True)
      for method, name in reproduce.FIELD_NAMES[1:]),
)


def test_the_equal_compute_table_quotes_the_committed_cells():
    """docs/beyond-mbem.md's equal-compute table: each end-to-end method's 20-epoch mean ± std, its
    10-epoch mean in brackets, one-coin MBEM's two 10-epoch trainings and its 20-epoch final training."""
    rows = next(table for table in tables("docs/beyond-mbem.md", "Which method to train with")
                if table[0][0].startswith("equal compute"))
    header, body = rows[0], rows[1:]
    settings = [next(s for start, r, s in ROWS if h.startswith(start) and h.endswith(r)) for h in header[1:]]
    checked = set()
    for row in body:
        label, algorithm, folder, bracketed = next(spec for spec in EQUAL_COMPUTE_ROWS if row[0].startswith(spec[0]))
        for setting, cell in zip(settings, row[1:], strict=True):
            numbers = [float(x) for x in re.findall(r"\d\.\d{3}", cell)]
            assert len(numbers) == (3 if bracketed else 2), (label, setting, cell)
            quoted_cells = [(folder or reproduce.ONE_COIN[setting], numbers[:2])]
            if bracketed:
                quoted_cells.append((reproduce.FIELD[setting], numbers[2:]))
            for where, quoted_numbers in quoted_cells:
                for number, actual in zip(quoted_numbers, measured(where, algorithm, setting[1]), strict=False):
                    assert number == pytest.approx(actual, abs=5e-4), (label, setting, where)
            checked.add((label, setting))
    assert len(checked) == 2 * len(EQUAL_COMPUTE_ROWS)  # every row at r = 1 and r = 3


def test_the_cifar10n_equal_compute_table_quotes_the_committed_cells():
    """docs/beyond-mbem.md's equal compute on CIFAR-10N r = 1: each end-to-end method's 20-epoch mean ±
    std with its 10-epoch mean in brackets, one-coin MBEM's two 10-epoch trainings and majority vote's one."""
    rows = next(table for table in tables("docs/beyond-mbem.md", "Which method to train with")
                if table[0][0].startswith("equal compute, CIFAR-10N r = 1"))
    setting = ("cifar10n", 1)
    expected = {name: [("results/field-cifar10n-20-epochs", method), (reproduce.FIELD[setting], method)]
                for method, name in reproduce.FIELD_NAMES[1:]}
    expected.update({"one-coin MBEM": [(reproduce.ONE_COIN[setting], "mbem")],
                     "majority vote": [("results/cifar10n", "mv")]})
    checked = set()
    for label, cell in rows[1:]:
        name = next(n for n in expected if label.startswith(n))
        numbers = [float(x) for x in re.findall(r"\d\.\d{3}", cell)]
        quoted_numbers = [numbers[:2], numbers[2:]]
        assert len(numbers) == 2 * len(expected[name]) - (len(expected[name]) > 1), (label, cell)
        for (folder, algorithm), quoted_here in zip(expected[name], quoted_numbers, strict=False):
            for number, actual in zip(quoted_here, measured(folder, algorithm, 1), strict=False):
                assert number == pytest.approx(actual, abs=5e-4), (label, folder)
        checked.add(name)
    assert checked == set(expected)
