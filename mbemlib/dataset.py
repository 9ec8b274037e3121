"""Images in: CIFAR-10 (official binary archive), class-folder trees (a folder or a .tar.gz of
one), and scikit-learn's bundled digits. Every loader returns a `Dataset` of uint8 N x C x H x W
images, int64 labels and class names.

The data folder is `--data-dir`, else $MBEM_DATA, else the checkout's `data/` (beside MBEM.py).
Decoded class-folder trees are cached there as .npz, keyed by the source's checksum, so a second load of
the 60,000 CIFAR JPEGs takes well under a second.
"""

import hashlib
import io
import os
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from mbemlib import ROOT
from mbemlib.atomic import replacing

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class Dataset:
    train_images: np.ndarray  # uint8 (N, C, H, W)
    train_labels: np.ndarray  # int64 (N,); -1 where nobody knows an image's class
    test_images: np.ndarray  # (0, C, H, W) when there is no test set
    test_labels: np.ndarray
    classes: list
    train_names: list = None  # what names each training image in an annotations CSV
    val_images: object = None  # a validation set of its own (ImageNet's), else split from the training images
    val_labels: np.ndarray = None


def data_dir(path=None):
    """The data folder: the argument, else $MBEM_DATA, else the checkout's data/ (mbemlib.ROOT)."""
    path = path or os.environ.get("MBEM_DATA") or os.path.join(ROOT, "data")
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
    with replacing(path) as tmp:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(path), disable=not progress) as bar:
                while block := response.read(1 << 16):
                    out.write(block)
                    bar.update(len(block))
        got = file_digest(tmp)
        if got != md5:
            raise OSError(f"{url}: md5 {got} does not match the expected {md5}")
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
    images, labels = np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])
    return Dataset(images, labels, test_images, test_labels, list(CIFAR10_CLASSES),
                   [str(i) for i in range(len(images))])  # the official training index


def decode(data, name):
    """uint8 (C, H, W) RGB pixels of an image file's bytes; ValueError naming the file otherwise."""
    from PIL import Image, UnidentifiedImageError  # only the class-folder loader needs Pillow

    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB")).transpose(2, 0, 1)
    except UnidentifiedImageError:
        raise ValueError(f"{name}: not a readable image (no image format Pillow knows)") from None
    except (OSError, ValueError, SyntaxError) as err:  # Pillow's ways of saying "damaged"
        raise ValueError(f"{name}: not a readable image ({err})") from None


def image_files(source):
    """(path parts, file path or bytes) for every image file of a folder (read later, one at a
    time) or tar.gz (read in its one pass), and the class folders (.../train/<class>,
    .../test/<class>) of a folder that hold no image at all."""
    images, empty = [], []
    if os.path.isdir(source):
        for dirpath, dirnames, files in os.walk(source):
            pictures = [f for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
            for name in pictures:
                path = os.path.join(dirpath, name)
                images.append((os.path.relpath(path, source).split(os.sep), path))
            if not pictures and not dirnames and os.path.basename(os.path.dirname(dirpath)) in ("train", "test"):
                empty.append(os.path.relpath(dirpath, source))
        return images, empty
    with tarfile.open(source) as archive:  # one pass; the compressed bytes are small beside the pixels
        for member in archive:
            if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
                images.append((member.name.split("/"), archive.extractfile(member).read()))
    return images, empty


def read_class_folders(source, progress=True):
    """Decode every image under `source` (a folder or .tar.gz, perhaps nested one level inside it).
    ROOT/train/<class>/<image> are training images of a known class, named "<class>/<image>";
    ROOT/test/<class>/<image> the test set; any other image is a training image whose class
    nobody knows (label -1), named by its path under ROOT. Class names are the class folders'
    (none without class folders: a run with real labels takes them from the labels). Returns the
    arrays (test ones empty without a test/ tree), the class names and the training images' names."""
    try:
        files, empty = image_files(source)
    except (OSError, tarfile.TarError) as err:
        raise ValueError(f"{source}: cannot read ({err})") from None
    if empty:
        raise ValueError(f"{source}: class folders without images: {', '.join(sorted(empty)[:5])}")
    if not files:
        raise ValueError(f"{source}: no images (.jpg, .jpeg, .png) in it")
    top = {parts[0] for parts, _ in files}  # a tarball of ROOT holds ROOT/...: its names start under ROOT
    strip = int(not os.path.isdir(source) and len(top) == 1 and not top & {"train", "test"}
                and all(len(parts) > 1 for parts, _ in files))
    found, other = {"train": [], "test": []}, []
    for parts, data in tqdm(files, desc=f"decoding {os.path.basename(source)}", disable=not progress, unit="img"):
        if isinstance(data, str):
            with open(data, "rb") as f:
                data = f.read()
        pixels = decode(data, "/".join(parts))
        parts = parts[strip:]
        if len(parts) == 3 and parts[0] in found:
            found[parts[0]].append((parts[1], parts[2], pixels))
        else:
            other.append(("/".join(parts), pixels))
    classes = sorted({c for split in found.values() for c, _, _ in split})
    if found["train"] and found["test"]:
        for split, entries in found.items():
            missing = sorted(set(classes) - {c for c, _, _ in entries})
            if missing:
                raise ValueError(f"{source}: no images in {split}/ for the classes {', '.join(missing[:5])}")
    for entries in found.values():
        entries.sort(key=lambda e: (e[0], e[1]))  # a fixed order whatever the file system lists
    other.sort(key=lambda e: e[0].split("/"))
    rank = {c: k for k, c in enumerate(classes)}
    train = [(f"{c}/{name}", rank[c], pixels) for c, name, pixels in found["train"]]
    train += [(name, -1, pixels) for name, pixels in other]
    test = [(f"test/{c}/{name}", rank[c], pixels) for c, name, pixels in found["test"]]
    names = [name for name, _, _ in train]
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: two training images share a name (a class folder under train/ and a folder "
                         f"of the same name beside it?)")
    sizes = {pixels.shape: name for name, _, pixels in train + test}
    if len(sizes) != 1:
        examples = "; ".join(f"{name} is {shape[1]}x{shape[2]}" for shape, name in list(sizes.items())[:3])
        raise ValueError(f"{source}: images of several sizes ({examples}); resize them to one size")
    shape = next(iter(sizes))
    arrays = {}
    for split, entries in (("train", train), ("test", test)):
        arrays[f"{split}_images"] = np.stack([p for _, _, p in entries]) if entries else np.zeros((0, *shape), np.uint8)
        arrays[f"{split}_labels"] = np.array([k for _, k, _ in entries], dtype=np.int64)
    arrays["train_names"] = np.array(names)
    return arrays, classes


def source_key(source):
    """sha256 of a tarball, or of a folder's listing (names, sizes, mtimes)."""
    if os.path.isdir(source):
        listing = sorted((os.path.relpath(os.path.join(d, f), source), os.stat(os.path.join(d, f)).st_size,
                          int(os.stat(os.path.join(d, f)).st_mtime)) for d, _, files in os.walk(source) for f in files)
        return hashlib.sha256(repr(listing).encode()).hexdigest()
    return file_digest(source, "sha256")


CACHE_KEYS = ("classes", "train_images", "train_labels", "test_images", "test_labels", "train_names")


def load_folder(source, root=None, progress=True):
    """A tree of images (folder or .tar.gz; see read_class_folders), decoded once and cached in the
    data folder. A cache that cannot be read whole (truncated, foreign, from an older version) is
    rebuilt, not trusted."""
    if not os.path.exists(source):
        raise FileNotFoundError(f"{source}: no such folder or archive")
    cache = os.path.join(data_dir(root), f"folder-v3-{source_key(source)[:16]}.npz")
    arrays = read_cache(cache)
    if arrays is None:
        found, classes = read_class_folders(source, progress)
        arrays = dict(found, classes=np.array(classes))
        with replacing(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return Dataset(arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"],
                   [str(c) for c in arrays["classes"]], [str(n) for n in arrays["train_names"]])


def read_cache(path):
    """The cached arrays, or None when the file is missing or not a whole, consistent cache."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in CACHE_KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    n, m = len(arrays["train_images"]), len(arrays["test_images"])
    consistent = (len(arrays["train_labels"]) == n == len(arrays["train_names"]) and len(arrays["test_labels"]) == m
                  and arrays["train_images"].dtype == np.uint8 and arrays["train_images"].ndim == 4)
    return arrays if consistent else None


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
