"""Label files: CSVs of crowd labels (item, worker, label) read into Annotations, posteriors and
confusions written out, every output written atomically, and the command line of
`python aggregation.py answers.csv --method em` (mbemlib/aggregation.py holds the estimators).
"""

import itertools
import re
import sys
import time

import numpy as np
import pandas as pd

from mbemlib.aggregation import (
    ALIASES,
    LABEL_ONLY,
    MAX_ITER,
    MBEM_STEPS,
    TOL,
    Annotations,
    aggregate,
    canonical,
    mbem_update,
)
from mbemlib.atomic import atomic_write
from mbemlib.cli import InputError, Parser, number, output_problem

ITEM_COLUMNS, WORKER_COLUMNS, LABEL_COLUMNS = ("item", "task", "question"), ("worker",), ("label", "answer")
# Every upper/lower-case spelling of the words that mean "no value" (NaN, nan, NULL, ...).
MISSING = sorted({"".join(chars) for word in ("", "nan", "na", "n/a", "null", "none")
                  for chars in itertools.product(*({c.lower(), c.upper()} for c in word))})


def clean_codes(column):
    """Integer codes for a column of strings and the distinct names, in order of first appearance;
    code -1 marks a missing value (read_csv turns every MISSING spelling into NaN).
    Surrounding white space is dropped; it is looked for once in the joined distinct names, so the
    per-name strip runs only when some name has it."""
    codes, names = pd.factorize(column, sort=False)
    if re.search(r"(^|\x00)\s|\s($|\x00)", "\x00".join(names)):
        stripped = pd.Index(names).str.strip()
        codes2, names = pd.factorize(stripped.where(~stripped.isin(MISSING)), sort=False)  # " NaN " is missing
        codes = np.where(codes >= 0, codes2[np.maximum(codes, 0)], -1)
    return codes.astype(np.int64), list(names)


def spelling_warning(raw_labels):
    """A line naming labels that differ only in case or surrounding spaces, or None: spaces are
    dropped (" cat" is "cat"), case is kept ("Cat" and "cat" are two classes)."""
    groups = {}
    for label in raw_labels:
        groups.setdefault(str(label).strip().lower(), set()).add(str(label))
    alike = [sorted(spellings) for spellings in groups.values() if len(spellings) > 1]
    if not alike:
        return None
    shown = "; ".join(" and ".join(repr(s) for s in spellings) for spellings in alike[:3])
    return (f"labels that differ only in case or surrounding spaces: {shown}{' ...' if len(alike) > 3 else ''} "
            "(surrounding spaces are dropped, so those are one class; different case is kept as different classes)")


def sort_classes(names):
    """Class names in numeric order when they are all numbers, else in string order."""
    try:
        return sorted(names, key=float)
    except (ValueError, TypeError):  # TypeError: values float() cannot take (tuples, None)
        return sorted(names)


def find_column(header, aliases, path):
    lowered = [str(h).strip().lower() for h in header]
    for alias in aliases:
        if alias in lowered:
            return header[lowered.index(alias)]
    raise InputError(f"{path}: no column named {' or '.join(aliases)} in header {','.join(map(str, header))}")


def read_answers(path):
    """Read a CSV (item, worker, label) into Annotations and the names of items, workers, classes.

    pandas' C parser reads 1.2M rows in well under a second; the csv module takes several.
    """
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=MISSING, skip_blank_lines=True)
    except pd.errors.EmptyDataError as err:
        raise InputError(f"{path}: empty file") from err
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise InputError(f"{path}: cannot read as CSV: {str(err).strip().splitlines()[-1]}") from err
    if len(frame.columns) == 1 and (delimiter := next((d for d in ("\t", ";", "|") if d in frame.columns[0]), None)):
        name = {"\t": "tab", ";": "semicolon", "|": "bar"}[delimiter]
        raise InputError(f"{path}: the header {frame.columns[0]!r} is one column: the file looks {name}-separated "
                         f"({delimiter!r}); write it with commas")
    columns = [find_column(list(frame.columns), aliases, path)
               for aliases in (ITEM_COLUMNS, WORKER_COLUMNS, LABEL_COLUMNS)]
    if extra := [str(c) for c in frame.columns if c not in columns]:
        print(f"note: {path}: column{'s' * (len(extra) > 1)} {','.join(extra)} not read (only item, worker and "
              "label are)", file=sys.stderr)
    if frame.empty:
        raise InputError(f"{path}: no labels after the header")
    (items, item_names), (workers, worker_names), (raw_labels, seen) = (clean_codes(frame[c]) for c in columns)
    if warning := spelling_warning(frame[columns[2]].dropna().unique()):
        print(f"warning: {path}: {warning}", file=sys.stderr)
    for what, codes in (("item", items), ("worker", workers), ("label", raw_labels)):
        if codes.min() < 0:
            raise InputError(f"{path}:{int(np.argmax(codes < 0)) + 2}: blank or NaN {what}")
    classes = sort_classes(seen)
    if len(classes) < 2:
        raise InputError(f"{path}: every label is {classes[0]!r}: aggregation needs at least two classes")
    rank = {c: k for k, c in enumerate(classes)}
    labels = np.array([rank[c] for c in seen], dtype=np.int64)[raw_labels]
    pairs = items * len(worker_names) + workers
    order = np.argsort(pairs, kind="stable")
    repeated = np.flatnonzero(pairs[order][1:] == pairs[order][:-1])
    if len(repeated):
        row = int(order[repeated[0] + 1])
        raise InputError(f"{path}:{row + 2}: duplicate (item, worker) row: "
                         f"{item_names[items[row]]}, {worker_names[workers[row]]}")
    ann = Annotations(items, workers, labels, len(item_names), len(worker_names), len(classes))
    return ann, item_names, worker_names, classes




def csv_field(name):
    """Quote a name for CSV when it holds a comma, quote or newline."""
    if any(c in name for c in ',"\n\r'):
        return '"' + name.replace('"', '""') + '"'
    return name


def csv_fields(names):
    """csv_field over a list of names; one scan of the joined text decides whether any needs quoting."""
    joined = "\x00".join(names)
    return [csv_field(s) for s in names] if any(c in joined for c in ',"\n\r') else names


# ",d.ddd" for 0..1000 thousandths and "ddd" for 0..999 millionths: probabilities are formatted
# by two table look-ups per entry instead of one Python format call per float (10x faster).
_HIGH = np.array([f",{h // 1000}.{h % 1000:03d}".encode() for h in range(1001)], dtype="S6")
_LOW = np.array([f"{v:03d}".encode() for v in range(1000)], dtype="S3")


def format_probabilities(probs):
    """One byte string per row: ",p_0,p_1,..." with six decimals."""
    high, low = np.divmod(np.rint(probs * 1e6).astype(np.int32), 1000)
    text = np.empty(probs.shape, dtype=[("high", "S6"), ("low", "S3")])
    text["high"], text["low"] = _HIGH[high], _LOW[low]
    return text.view(f"S{9 * probs.shape[1]}").ravel().tolist()


def posterior_csv(probs, item_names, classes):
    """item,label,p_<class>... as bytes; label is the most probable class, spelled as in the input."""
    header = ",".join(["item", "label"] + csv_fields([f"p_{c}" for c in classes]))
    quoted = csv_fields(item_names)
    joined = "\n".join(quoted)  # encode once and split, unless a quoted name holds a newline itself
    names = joined.encode().split(b"\n") if joined.count("\n") == len(quoted) - 1 else [q.encode() for q in quoted]
    labels = [("," + c).encode() for c in csv_fields(classes)]
    best = np.array(labels, dtype=object)[np.argmax(probs, axis=1)].tolist()
    lines = map(b"".join, zip(names, best, format_probabilities(probs), strict=True))
    return header.encode() + b"\n" + b"\n".join(lines) + b"\n"


def confusions_csv(confusions, worker_names, classes):
    """worker,true_label,given_label,probability: one row per confusion entry."""
    rows = ["worker,true_label,given_label,probability"]
    quoted = [csv_field(c) for c in classes]
    for a, name in enumerate(worker_names):
        worker = csv_field(str(name))
        rows += [f"{worker},{quoted[k]},{quoted[l]},{confusions[a, k, l]:.6g}"
                 for k in range(len(classes)) for l in range(len(classes))]
    return ("\n".join(rows) + "\n").encode()


def relabel(ann, label_classes, model_classes):
    """`ann` with its labels renumbered as the model's classes (matched by name: the column "p_3"
    names the label 3); ValueError naming labels the model has no column for."""
    rank = {str(c): k for k, c in enumerate(model_classes)}
    unknown = [c for c in label_classes if str(c) not in rank]
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not columns of the model's probabilities ({model_classes[:10]})")
    position = np.array([rank[str(c)] for c in label_classes], dtype=np.int64)
    return Annotations(ann.items, ann.workers, position[ann.labels], ann.n, ann.m, len(model_classes))


def model_table(model_probs, item_names):
    """(n x K probabilities in the order of item_names, classes) from the model's DataFrame."""
    frame = pd.DataFrame(model_probs)
    named = [c for c in frame.columns if isinstance(c, str) and c.startswith("p_")]
    frame = frame[named] if named else frame  # a posterior CSV's own columns: item, label, p_<class>...
    classes = [c[2:] if c in named else c for c in frame.columns]
    missing = [i for i in item_names if i not in frame.index]
    if missing:
        raise ValueError(f"the model's probabilities have no row for {len(missing)} labelled items, e.g. "
                         f"{missing[:3]}")
    probs = frame.loc[item_names].to_numpy(dtype=np.float64)
    if not np.isfinite(probs).all() or (probs < 0).any() or np.abs(probs.sum(axis=1) - 1).max() > 1e-3:
        raise ValueError("the model's probabilities must be finite, non-negative rows summing to 1")
    return probs, classes


def main(argv=None):
    parser = Parser(
        description="Aggregate crowdsourced labels (CSV with columns item, worker, label; "
        "aliases task/question and answer) into a posterior over each item's true class.")
    parser.add_argument("answers", help="CSV of labels, one row per (item, worker, label)")
    parser.add_argument("--method", type=canonical, choices=(*LABEL_ONLY, "mbem"), default="em",
                        help=f"mv: majority vote; wmv: label frequencies; em: Dawid-Skene EM (default; "
                             f"{', '.join(ALIASES)} is accepted for it); mbem: MBEM's M- and E-step from your "
                             "classifier's probabilities (--model-probs)")
    parser.add_argument("--model-probs", help="--method mbem: CSV item,p_<class>,... of a classifier's predicted "
                                              "probabilities, a row per labelled item, rows summing to 1")
    parser.add_argument("--class-prior", action="store_true",
                        help="--method mbem: the class prior q in the E-step (the paper's Algorithm 1; the release "
                             "has none)")
    parser.add_argument("--mbem-step", choices=tuple(MBEM_STEPS), default="release",
                        help="--method mbem: its M-step: release (a full confusion per worker, as if the model were "
                             "right; the paper's), one-coin (an accuracy per worker, corrected for the model's "
                             "accuracy) or per-class-coin (one per worker and class); docs/worker-estimates.md")
    parser.add_argument("--truth", help="CSV item,label of known true labels: print the accuracy on the items "
                                        "it covers")
    parser.add_argument("--out", help="write item,label,p_<class>... here (default: stdout)")
    parser.add_argument("--confusions-out", help="write each worker's estimated confusion matrix here (long CSV)")
    parser.add_argument("--seed", type=number(int, 0), default=0, help="seed for majority-vote tie breaking")
    parser.add_argument("--max-iter", type=number(int, 1), default=MAX_ITER, help="Dawid-Skene iteration cap")
    parser.add_argument("--tol", type=number(float, 0), default=TOL,
                        help="Dawid-Skene stop: mean log-likelihood gain")
    args = parser.parse_args(argv)
    if (args.method == "mbem") != bool(args.model_probs):
        parser.error("--method mbem needs --model-probs, and --model-probs is for --method mbem")
    if args.class_prior and args.method != "mbem":
        parser.error("--class-prior is for --method mbem")
    if args.mbem_step != "release" and args.method != "mbem":
        parser.error("--mbem-step is for --method mbem")
    for flag, path in (("--out", args.out), ("--confusions-out", args.confusions_out)):
        if path and (problem := output_problem(path)):
            parser.error(f"{flag}: {problem}")
    start = time.perf_counter()
    try:
        ann, item_names, worker_names, classes = read_answers(args.answers)
        if args.method == "mbem":
            model, model_classes = model_table(read_table(args.model_probs, "item"), item_names)
            ann, classes = relabel(ann, classes, model_classes), model_classes
        truth = read_table(args.truth, "item", "label") if args.truth else None
        if truth is not None and (foreign := sorted(set(truth) - set(classes))):
            said = f"its labels {','.join(map(str, foreign[:5]))} are not among the answers' labels " \
                   f"{','.join(map(str, classes[:10]))}"
            if len(foreign) == len(set(truth)):  # nothing in common: every accuracy would be 0
                raise InputError(f"--truth {args.truth}: {said}: write the truth in the answers' labels")
            print(f"warning: --truth {args.truth}: {said}; its items of those classes count as wrong",
                  file=sys.stderr)
    except (InputError, ValueError) as err:
        print("error: " + str(err).replace("\n", "\\n").replace("\r", "\\r"), file=sys.stderr)  # one line
        return 2
    if args.method == "mbem":
        (probs, confusions), iterations = mbem_update(ann, model, args.mbem_step, args.class_prior), 0
    else:
        fit = aggregate(ann, args.method, np.random.default_rng(args.seed), args.max_iter, args.tol)
        probs, confusions, iterations = fit.posterior, fit.confusions, fit.iterations
        if not fit.converged:
            print(f"warning: Dawid-Skene stopped at --max-iter {args.max_iter} before converging (the mean "
                  f"log-likelihood still gained --tol {args.tol:g} or more): raise --max-iter", file=sys.stderr)
    table = posterior_csv(probs, item_names, classes)
    try:
        if args.confusions_out:
            atomic_write(args.confusions_out, confusions_csv(confusions, worker_names, classes))
        if args.out:
            atomic_write(args.out, table)
        else:
            sys.stdout.buffer.write(table)
            sys.stdout.flush()
    except OSError as err:
        print(f"error: cannot write the output: {err}", file=sys.stderr)
        return 2
    print(f"items {ann.n} workers {ann.m} labels {len(ann.items)} classes {ann.K} "
          f"iterations {iterations} seconds {time.perf_counter() - start:.2f}", file=sys.stderr)
    if truth is not None:
        predicted = pd.Series(np.asarray(classes, dtype=object)[probs.argmax(axis=1)], index=item_names)
        covered = truth.index.intersection(predicted.index)
        accuracy = float((predicted[covered] == truth[covered]).mean()) if len(covered) else float("nan")
        print(f"truth: accuracy {accuracy:.4f} on the {len(covered)} of {len(truth)} items with a true label that "
              "were labelled", file=sys.stderr)
    return 0


def read_table(path, index, column=None):
    """A CSV indexed by its `index` column, as read (a classifier's probabilities), or with `column`
    that column's strings (known true labels); InputError naming the file when it cannot be read,
    lacks a column or repeats an item."""
    try:
        frame = pd.read_csv(path, dtype={index: str, **({column: str} if column else {})}, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(f"{path}: cannot read as CSV: {str(err).strip().splitlines()[-1]}") from err
    for name in filter(None, (index, column)):
        if name not in frame.columns:
            raise InputError(f"{path}: no column named {name} in header {','.join(map(str, frame.columns))}")
    if frame[index].duplicated().any():
        raise InputError(f"{path}: item {frame[index][frame[index].duplicated()].iloc[0]!r} appears twice")
    frame = frame.set_index(index)
    return frame[column] if column else frame
