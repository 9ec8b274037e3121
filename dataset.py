"""Images in: CIFAR-10 (official binary archive), class-folder trees (a folder or a .tar.gz of
one), and scikit-learn's bundled digits. Every loader returns a `Dataset` of uint8 N x C x H x W
images, int64 labels and class names.

The data folder is `--data-dir`, else $MBEM_DATA, else `data/` beside this file. Decoded
class-folder trees are cached there as .npz, keyed by the source's checksum, so a second load of
the 60,000 CIFAR JPEGs takes well under a second.
"""

import hashlib
import io
import os
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class Dataset:
    train_images: np.ndarray  # uint8 (N, C, H, W)
    train_labels: np.ndarray  # int64 (N,)
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list


def data_dir(path=None):
    """The data folder: the argument, else $MBEM_DATA, else data/ beside this file."""
    path = path or os.environ.get("MBEM_DATA") or os.path.join(HERE, "data")
    os.makedirs(path, exist_ok=True)
    return path


def file_digest(path, algorithm="md5", chunk=1 << 20):
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(url, path, md5, progress=True):
    """Fetch url to path unless a file with the right md5 is there. The bytes go to a temporary
    name first and are renamed only once whole and checked, so a partial download is never
    mistaken for the archive; a file with the wrong md5 is fetched again."""
    if os.path.exists(path) and file_digest(path) == md5:
        return path
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(path), disable=not progress) as bar:
                while block := response.read(1 << 16):
                    out.write(block)
                    bar.update(len(block))
        got = file_digest(tmp)
        if got != md5:
            raise OSError(f"{url}: md5 {got} does not match the expected {md5}")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def safe_members(archive, root):
    """The archive's members, refusing any that would land outside `root` (../, absolute paths, links)."""
    root = os.path.realpath(root)
    for member in archive.getmembers():
        target = os.path.realpath(os.path.join(root, member.name))
        if os.path.commonpath([root, target]) != root or member.issym() or member.islnk():
            raise ValueError(f"refusing archive member {member.name!r}: it would land outside {root}")
        yield member


def extract(archive_path, root):
    with tarfile.open(archive_path) as archive:
        archive.extractall(root, members=list(safe_members(archive, root)))


def read_cifar_binary(path):
    """Records of 1 label byte + 3072 pixel bytes (3 x 32 x 32, channel-major)."""
    records = np.fromfile(path, dtype=np.uint8).reshape(-1, 3073)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def load_cifar10(root=None, url=CIFAR10_URL, progress=True):
    """CIFAR-10 from the official binary archive: downloaded, md5-checked, safely extracted."""
    root = data_dir(root)
    archive = download(url, os.path.join(root, "cifar-10-binary.tar.gz"), CIFAR10_MD5, progress)
    folder = os.path.join(root, "cifar-10-batches-bin")
    if not os.path.exists(os.path.join(folder, "test_batch.bin")):
        extract(archive, root)
    train = [read_cifar_binary(os.path.join(folder, f"data_batch_{i}.bin")) for i in range(1, 6)]
    test_images, test_labels = read_cifar_binary(os.path.join(folder, "test_batch.bin"))
    return Dataset(np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]),
                   test_images, test_labels, list(CIFAR10_CLASSES))


def decode(data):
    from PIL import Image  # only the class-folder loader needs Pillow

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB")).transpose(2, 0, 1)


def image_files(source):
    """(split, class, name, bytes reader) for every image under train/ and test/ of a folder or tar.gz."""
    if os.path.isdir(source):
        for dirpath, _, files in os.walk(source):
            for name in files:
                if name.lower().endswith(IMAGE_SUFFIXES):
                    path = os.path.join(dirpath, name)
                    parts = os.path.relpath(path, source).split(os.sep)
                    yield parts, lambda p=path: open(p, "rb").read()
    else:
        with tarfile.open(source) as archive:
            for member in archive:
                if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
                    yield member.name.split("/"), archive.extractfile(member).read


def read_class_folders(source, progress=True):
    """Decode ROOT/{train,test}/<class>/<image> (ROOT may be nested one level inside a tarball)."""
    found = {"train": [], "test": []}
    for parts, read in tqdm(image_files(source), desc=f"decoding {os.path.basename(source)}", disable=not progress,
                            unit="img"):
        split_at = next((i for i, p in enumerate(parts[:-2]) if p in found), None)
        if split_at is not None and len(parts) - split_at == 3:
            found[parts[split_at]].append((parts[split_at + 1], parts[-1], decode(read())))
    if not found["train"] or not found["test"]:
        raise ValueError(f"{source}: expected train/<class>/<image> and test/<class>/<image>")
    classes = sorted({c for split in found.values() for c, _, _ in split})
    arrays = {}
    for split, entries in found.items():
        entries.sort(key=lambda e: (e[0], e[1]))  # a fixed order whatever the file system lists
        shapes = {e[2].shape for e in entries}
        if len(shapes) != 1:
            raise ValueError(f"{source}: images of several sizes in {split}/: {sorted(shapes)[:3]}")
        arrays[f"{split}_images"] = np.stack([e[2] for e in entries])
        arrays[f"{split}_labels"] = np.array([classes.index(e[0]) for e in entries], dtype=np.int64)
    return arrays, classes


def source_key(source):
    """sha256 of a tarball, or of a folder's listing (names, sizes, mtimes)."""
    if os.path.isdir(source):
        listing = sorted((os.path.relpath(os.path.join(d, f), source), os.stat(os.path.join(d, f)).st_size,
                          int(os.stat(os.path.join(d, f)).st_mtime)) for d, _, files in os.walk(source) for f in files)
        return hashlib.sha256(repr(listing).encode()).hexdigest()
    return file_digest(source, "sha256")


def load_folder(source, root=None, progress=True):
    """A class-folder tree (folder or .tar.gz), decoded once and cached in the data folder."""
    if not os.path.exists(source):
        raise FileNotFoundError(f"{source}: no such folder or archive")
    cache = os.path.join(data_dir(root), f"folder-{source_key(source)[:16]}.npz")
    if os.path.exists(cache):
        with np.load(cache) as f:
            arrays, classes = {k: f[k] for k in f.files if k != "classes"}, list(f["classes"])
    else:
        arrays, classes = read_class_folders(source, progress)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(cache), prefix=".part-", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, classes=np.array(classes), **arrays)
        os.replace(tmp, cache)
    return Dataset(arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                   arrays["test_labels"], [str(c) for c in classes])


def load_digits(test_fraction=0.3, seed=0):
    """scikit-learn's bundled 8 x 8 digits (offline), scaled to 0..255 and split deterministically."""
    from sklearn.datasets import load_digits as sk_digits

    digits = sk_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = int(len(images) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return Dataset(images[train], digits.target[train].astype(np.int64), images[test],
                   digits.target[test].astype(np.int64), [str(c) for c in range(10)])


def validation_split(n, size, seed=0):
    """Deterministic (train_index, val_index) over range(n), val of the given size."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[size:]), np.sort(order[:size])
