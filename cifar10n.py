"""CIFAR-10N's real human labels (Wei et al., ICLR 2022; CC BY-NC 4.0) as an annotations CSV
(item, worker, label) for `MBEM.py --annotations` and `aggregation.py`, read from the files as
published (the official repository's `CIFAR-10_human.pt` and `side_info_cifar10N.csv`):

    python cifar10n.py FOLDER --out answers.csv                # items: official training indices (--dataset cifar10)
    python cifar10n.py FOLDER --items jpeg --out answers.csv   # items: airplane/0001.jpg, ... (the JPEG copy)

`CIFAR-10_human.pt` is a torch zip archive whose `data.pkl` holds a dict of int64 numpy arrays
(clean_label, aggre_label, worse_label, random_label1..3), 50,000 each in the official training
order. It is unpickled with only numpy's array constructors allowed, so a file that asks for
any other object (code, tensors) is refused rather than run. `side_info_cifar10N.csv` names three
workers per batch of ten consecutive images; label column j of images a..a+9 is read as worker
j's (the usual reading, also TensorFlow Datasets'; the authors say only that a worker labelled a
batch of ten: see the shared README's caveat). `--items jpeg` needs the map
`official_train_index_to_jpg.csv` in FOLDER. It prints, beside the label counts, whether the
worker ids carry a quality of their own (`worker_effects`: spread against binomial noise, and
split-half correlation, judged by the clean labels).
"""

import argparse
import os
import pickle
import sys
import zipfile

import numpy as np
import pandas as pd

from mbemlib.atomic import atomic_write
from mbemlib.cli import InputError, Parser, output_problem
from mbemlib.dataset import CIFAR10_CLASSES

N = 50000
LABEL_COLUMNS = ("random_label1", "random_label2", "random_label3")
# What a pickled dict of numpy arrays needs, and nothing else.
ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
           ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")}


class NumpyOnly(pickle.Unpickler):
    """Unpickles plain data and numpy arrays; any other class or a torch storage is refused."""

    def find_class(self, module, name):
        if (module, name) not in ALLOWED:
            raise InputError(f"refusing to unpickle {module}.{name}: only numpy arrays are expected")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise InputError("refusing a torch tensor: only numpy arrays are expected")


def read_labels(path):
    """{name: int64 array of 50,000} from CIFAR-10_human.pt, checked."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickled = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not pickled:
                raise InputError(f"{path}: no data.pkl inside: not a torch zip archive")
            with archive.open(pickled[0]) as f:
                data = NumpyOnly(f).load()
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise InputError(f"{path}: cannot read ({err})") from None
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a dict of arrays, found {type(data).__name__}")
    missing = [k for k in ("clean_label", *LABEL_COLUMNS) if k not in data]
    if missing:
        raise InputError(f"{path}: no {', '.join(missing)} in it")
    for key, value in data.items():
        if not isinstance(value, np.ndarray) or value.shape != (N,) or value.dtype.kind not in "iu" \
                or value.min() < 0 or value.max() >= len(CIFAR10_CLASSES):
            raise InputError(f"{path}: {key} is not {N} class indices")
    return data


def read_workers(path):
    """(50,000, 3) worker ids and (50,000,) batches: row i = a--b of the side information names
    workers 1..3 of images a..b, which make batch i."""
    try:
        side = pd.read_csv(path)
        columns = [f"Worker{j}-id" for j in (1, 2, 3)]
        bounds = side["Image-batch"].str.split("--", expand=True).astype(int).to_numpy()
        ids = side[columns].to_numpy(dtype=np.int64)
    except (OSError, KeyError, ValueError, AttributeError, pd.errors.ParserError) as err:
        raise InputError(f"{path}: not CIFAR-10N's side information ({err})") from None
    if bounds.shape[1] != 2 or not np.array_equal(np.sort(np.concatenate([np.arange(a, b + 1) for a, b in bounds])),
                                                  np.arange(N)):
        raise InputError(f"{path}: the image batches do not cover the {N} training images once each")
    workers, batches = np.empty((N, 3), dtype=np.int64), np.empty(N, dtype=np.int64)
    sizes = bounds[:, 1] - bounds[:, 0] + 1
    images = np.concatenate([np.arange(a, b + 1) for a, b in bounds])
    workers[images] = np.repeat(ids, sizes, axis=0)
    batches[images] = np.repeat(np.arange(len(bounds)), sizes)
    return workers, batches


def jpeg_names(path):
    """Official training index -> the JPEG copy's name under train/ ("airplane/0001.jpg")."""
    try:
        table = pd.read_csv(path).sort_values("official_index")
        names = table["jpg_path"].str.replace(r"^train/", "", regex=True).to_numpy()
    except (OSError, KeyError, ValueError, pd.errors.ParserError) as err:
        raise InputError(f"{path}: not the index-to-JPEG map ({err})") from None
    if len(names) != N or not np.array_equal(table["official_index"].to_numpy(), np.arange(N)):
        raise InputError(f"{path}: expected one row per official training index 0..{N - 1}")
    return names


def annotations(labels, workers, item_names=None):
    """A DataFrame item, worker, label: three rows per image (random_label1..3 with workers 1..3),
    labels spelled as CIFAR-10's class names."""
    items = np.repeat(np.arange(N), 3)
    names = np.asarray(CIFAR10_CLASSES)
    label = np.stack([labels[c] for c in LABEL_COLUMNS], axis=1).ravel()
    return pd.DataFrame({"item": items if item_names is None else item_names[items],
                         "worker": workers.ravel(), "label": names[label]})


def worker_effects(right, workers, batches, min_labels=100):
    """Do the worker ids carry a worker's quality? An estimator-free check on labels with a truth.
    `right` (50,000, 3): label j of image i is right; `workers` the ids beside it; `batches` each
    image's batch. Among workers with at least `min_labels` labels: their count; the spread
    (sd) of their accuracy; the spread binomial noise alone gives if all had the pooled accuracy
    p, sqrt(mean_a p(1 - p) / n_a); and the split-half correlation: each worker's batches taken
    alternately (in batch order) into two halves, the correlation of the two halves' accuracy
    over workers. Real differences between workers show as a spread above the binomial one and a
    clearly positive split-half correlation."""
    w, ok = workers.ravel(), right.ravel().astype(float)
    batch, span = np.repeat(batches, workers.shape[1]), batches.max() + 1
    pair, first_label = np.unique(w * span + batch, return_inverse=True)  # (worker, batch) pairs, sorted
    pair_worker = pair // span
    rank = np.arange(len(pair)) - np.searchsorted(pair_worker, pair_worker)  # batch's rank among the worker's
    half = rank[first_label] % 2
    m = w.max() + 1
    count = np.bincount(w, minlength=m)
    keep = count >= min_labels
    accuracy = np.bincount(w, ok, minlength=m)[keep] / count[keep]
    pooled = ok[keep[w]].mean()
    halves = [np.bincount(w[half == h], ok[half == h], minlength=m)[keep] /
              np.bincount(w[half == h], minlength=m)[keep] for h in (0, 1)]
    return {"workers": int(keep.sum()), "accuracy_sd": float(accuracy.std(ddof=1)),
            "binomial_sd": float(np.sqrt((pooled * (1 - pooled) / count[keep]).mean())),
            "split_half_correlation": float(np.corrcoef(*halves)[0, 1])}


def main(argv=None):
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="folder with CIFAR-10_human.pt and side_info_cifar10N.csv "
                                       "(e.g. ../shared/data/crowd/cifar10n)")
    parser.add_argument("--items", choices=["index", "jpeg"], default="index",
                        help="index: official training indices (--dataset cifar10); jpeg: <class>/NNNN.jpg of the "
                             "class-folder copy (--dataset folder)")
    parser.add_argument("--out", required=True, help="the annotations CSV to write")
    args = parser.parse_args(argv)
    if problem := output_problem(args.out):
        parser.error(f"--out: {problem}")
    try:
        labels = read_labels(os.path.join(args.folder, "CIFAR-10_human.pt"))
        workers, batches = read_workers(os.path.join(args.folder, "side_info_cifar10N.csv"))
        names = jpeg_names(os.path.join(args.folder, "official_train_index_to_jpg.csv")) \
            if args.items == "jpeg" else None
        table = annotations(labels, workers, names)
        atomic_write(args.out, table.to_csv(index=False).encode())
    except (InputError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    right = np.stack([labels[c] == labels["clean_label"] for c in LABEL_COLUMNS], axis=1)
    agreement = right.mean(axis=0)
    effects = worker_effects(right, workers, batches)
    print(f"{len(table)} labels of {N} images by {len(np.unique(workers))} workers -> {args.out}; agreement with "
          f"clean_label {' '.join(f'{a:.4f}' for a in agreement)}\n"
          f"worker ids: among the {effects['workers']} workers with at least 100 labels, accuracy sd "
          f"{effects['accuracy_sd']:.3f} (binomial noise alone: {effects['binomial_sd']:.3f}), split-half "
          f"correlation {effects['split_half_correlation']:+.2f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
