"""Loaders and downloads, against a loopback HTTP server the test starts itself."""

import functools
import hashlib
import http.server
import io
import os
import tarfile
import threading

import numpy as np
import pytest
from PIL import Image

from conftest import shared_path
from mbemlib import dataset


class Server:
    """Serves `files` (name -> bytes) on 127.0.0.1; `cut` names are sent half and then dropped."""

    def __init__(self, files, cut=()):
        self.files, self.cut, self.hits = files, set(cut), []
        handler = functools.partial(self.Handler, self)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, name):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    class Handler(http.server.BaseHTTPRequestHandler):
        def __init__(self, server, *args, **kwargs):
            self.owner = server
            super().__init__(*args, **kwargs)

        def do_GET(self):  # noqa: N802 (the http.server API)
            name = self.path.lstrip("/")
            self.owner.hits.append(name)
            body = self.owner.files[name]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if name in self.owner.cut else body)

        def log_message(self, *args):
            pass

    def close(self):
        self.httpd.shutdown()


def md5(data):
    return hashlib.md5(data).hexdigest()


def cifar_binary_archive(n_train=4, n_test=3):
    """A tiny archive in the official layout: 1 label byte + 3072 pixel bytes per record."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
        for name in names:
            n = n_test if name.startswith("test") else n_train
            records = np.concatenate([rng.integers(0, 10, (n, 1)), rng.integers(0, 256, (n, 3072))], axis=1)
            payload = records.astype(np.uint8).tobytes()
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def test_download_checks_md5_and_refetches_a_bad_file(tmp_path):
    body = os.urandom(200_000)
    server = Server({"a.bin": body})
    target = tmp_path / "a.bin"
    dataset.download(server.url("a.bin"), str(target), md5(body), progress=False)
    assert target.read_bytes() == body and server.hits == ["a.bin"]
    dataset.download(server.url("a.bin"), str(target), md5(body), progress=False)
    assert server.hits == ["a.bin"]  # a good file is not fetched again
    target.write_bytes(b"corrupt")
    dataset.download(server.url("a.bin"), str(target), md5(body), progress=False)
    assert target.read_bytes() == body and len(server.hits) == 2
    server.close()


def test_wrong_md5_and_partial_downloads_never_land(tmp_path):
    body = os.urandom(100_000)
    server = Server({"a.bin": body, "cut.bin": body}, cut={"cut.bin"})
    with pytest.raises(OSError, match="md5"):
        dataset.download(server.url("a.bin"), str(tmp_path / "a.bin"), md5(b"other"), progress=False)
    with pytest.raises(Exception):  # noqa: B017 (http.client raises IncompleteRead, urllib may wrap it)
        dataset.download(server.url("cut.bin"), str(tmp_path / "cut.bin"), md5(body), progress=False)
    assert os.listdir(tmp_path) == []  # no half file, no temporary left behind
    server.close()


def test_load_cifar10_from_a_served_archive(tmp_path):
    archive = cifar_binary_archive()
    server = Server({"cifar.tar.gz": archive})
    import unittest.mock as mock

    with mock.patch.object(dataset, "CIFAR10_MD5", md5(archive)):
        ds = dataset.load_cifar10(str(tmp_path), url=server.url("cifar.tar.gz"), progress=False)
    assert ds.train_images.shape == (20, 3, 32, 32) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (3, 3, 32, 32) and len(ds.classes) == 10
    assert ds.train_labels.dtype == np.int64 and ds.train_labels.max() < 10
    server.close()


def test_extraction_refuses_members_outside_the_folder(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../evil.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(buffer.getvalue())
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ValueError, match="outside"):
        dataset.extract(str(archive), str(root))
    assert not (tmp_path / "evil.txt").exists()


def make_tree(root, sizes=(6, 4)):
    rng = np.random.default_rng(1)
    for split, count in zip(("train", "test"), sizes, strict=True):
        for name in ("cat", "dog", "emu"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_class_folder_tree_and_its_cache(tmp_path):
    make_tree(tmp_path / "tree")
    cache = tmp_path / "cache"
    ds = dataset.load_folder(str(tmp_path / "tree"), str(cache), progress=False)
    assert ds.classes == ["cat", "dog", "emu"]
    assert ds.train_images.shape == (18, 3, 10, 12) and ds.test_images.shape == (12, 3, 10, 12)
    assert np.array_equal(np.bincount(ds.train_labels), [6, 6, 6])
    png = np.asarray(Image.open(tmp_path / "tree" / "train" / "cat" / "0.png")).transpose(2, 0, 1)
    assert np.array_equal(ds.train_images[0], png)  # PNG is lossless: the very pixels
    assert len(list(cache.glob("folder-*.npz"))) == 1
    again = dataset.load_folder(str(tmp_path / "tree"), str(cache), progress=False)
    assert np.array_equal(again.train_images, ds.train_images) and again.classes == ds.classes
    # the same tree as a tarball
    with tarfile.open(tmp_path / "tree.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="tree")
    packed = dataset.load_folder(str(tmp_path / "tree.tar.gz"), str(cache), progress=False)
    assert np.array_equal(packed.test_images, ds.test_images)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        dataset.load_folder(str(tmp_path / "nope"), str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        dataset.load_folder(str(tmp_path / "empty"), str(tmp_path), progress=False)


@pytest.mark.slow
def test_shared_cifar_jpegs():
    ds = dataset.load_folder(shared_path("cifar10-jpeg.tar.gz"), progress=False)
    assert ds.train_images.shape == (50000, 3, 32, 32) and ds.test_images.shape == (10000, 3, 32, 32)
    assert ds.classes == dataset.CIFAR10_CLASSES
    assert np.array_equal(np.bincount(ds.test_labels), [1000] * 10)


def test_digits_offline():
    ds = dataset.load_digits()
    assert ds.train_images.shape[1:] == (1, 8, 8) and ds.train_images.max() == 255
    assert len(ds.train_images) + len(ds.test_images) == 1797 and len(ds.classes) == 10


def test_data_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MBEM_DATA", str(tmp_path / "d"))
    assert dataset.data_dir() == str(tmp_path / "d") and (tmp_path / "d").is_dir()
    assert dataset.data_dir(str(tmp_path / "e")) == str(tmp_path / "e")


def test_validation_split_is_deterministic_and_disjoint():
    train, val = dataset.validation_split(100, 20, seed=3)
    assert len(val) == 20 and len(set(train) | set(val)) == 100
    assert np.array_equal(val, dataset.validation_split(100, 20, seed=3)[1])
