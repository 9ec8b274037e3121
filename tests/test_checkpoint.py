"""Each training keeps its state after every epoch and a killed one resumes from it: on torch
bit for bit (the CPU's kernels are deterministic), on MXNet as close as its oneDNN kernels allow."""

import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, needs_mxnet

TRAIN = """
import pickle, sys
import numpy as np
import importlib
from mbemlib.pipeline import Checkpoint
trainer = importlib.import_module(sys.argv[1])
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (192, 3, 16, 16), dtype=np.uint8)
targets = np.eye(4)[rng.integers(0, 4, 192)]
model, history = trainer.train(images, targets, 4, depth=8, epochs=int(sys.argv[4]), batch_size=32, seed=3,
                               desc="t", checkpoint=Checkpoint(sys.argv[2], sys.argv[5]))
probs = trainer.predict_proba(model, images[:64])
with open(sys.argv[3], "wb") as f:
    pickle.dump({"probs": probs, "history": history}, f)
"""
BACKENDS = ["resnet_torch", pytest.param("resnet", marks=needs_mxnet)]


def train(trainer, checkpoint, final, epochs=12, key="k", kill=False):
    """Run TRAIN in its own process; with kill, SIGKILL it once the first checkpoint is on disk."""
    command = [sys.executable, "-c", TRAIN, trainer, str(checkpoint), str(final), str(epochs), key]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if kill:
        while proc.poll() is None and not checkpoint.exists():
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    output = proc.communicate()[0]
    return proc.returncode, output


def untimed(history):
    return [{k: v for k, v in h.items() if k not in ("seconds", "img_per_s")} for h in history]


@pytest.mark.slow
@pytest.mark.parametrize("trainer", BACKENDS)
def test_a_training_killed_mid_way_resumes_from_its_last_epoch(tmp_path, trainer):
    """SIGKILL once an epoch's checkpoint is on disk, then the same training again: it says where
    it resumes and ends where the uninterrupted training ends; the checkpoint is gone after."""
    status, output = train(trainer, tmp_path / "a.ckpt", tmp_path / "a.pkl")
    assert status == 0 and not (tmp_path / "a.ckpt").exists(), output[-2000:]
    status, _ = train(trainer, tmp_path / "b.ckpt", tmp_path / "b.pkl", kill=True)
    assert status == -signal.SIGKILL and (tmp_path / "b.ckpt").exists() and not (tmp_path / "b.pkl").exists()
    status, output = train(trainer, tmp_path / "b.ckpt", tmp_path / "b.pkl")
    assert status == 0, output[-2000:]
    assert "t: resumed after epoch " in output and not (tmp_path / "b.ckpt").exists()
    whole, resumed = (pickle.loads((tmp_path / f"{x}.pkl").read_bytes()) for x in "ab")
    assert len(resumed["history"]) == 12 and resumed["history"][-1]["updates"] == whole["history"][-1]["updates"]
    assert [h["lr"] for h in resumed["history"]] == [h["lr"] for h in whole["history"]]  # the schedule's place
    if trainer == "resnet_torch":
        assert untimed(resumed["history"]) == untimed(whole["history"])
        assert np.array_equal(resumed["probs"], whole["probs"])
    else:  # two uninterrupted MXNet runs differ in the last digits too
        assert np.abs(resumed["probs"] - whole["probs"]).max() < 0.05


@pytest.mark.slow
def test_a_checkpoint_of_another_training_is_not_resumed(tmp_path):
    train("resnet_torch", tmp_path / "c.ckpt", tmp_path / "c.pkl", kill=True)
    assert (tmp_path / "c.ckpt").exists()
    status, output = train("resnet_torch", tmp_path / "c.ckpt", tmp_path / "c.pkl", epochs=3, key="other")
    assert status == 0 and "resumed" not in output
    assert "c.ckpt is another training's (other settings, labels, targets or trainer code)" in output
    assert len(pickle.loads((tmp_path / "c.pkl").read_bytes())["history"]) == 3


def test_a_full_disk_during_a_checkpoint_is_said_once_and_the_training_goes_on(tmp_path, monkeypatch, capsys):
    import errno

    import torch

    import resnet_torch
    from mbemlib.pipeline import Checkpoint

    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 3, 16, 16), dtype=np.uint8)
    _, history = resnet_torch.train(images, np.eye(4)[rng.integers(0, 4, 64)], 4, depth=8, epochs=3, batch_size=32,
                                    desc="t", checkpoint=Checkpoint(str(tmp_path / "x.ckpt"), "k"))
    said = capsys.readouterr()
    assert len(history) == 3 and (said.out + said.err).count("cannot write its checkpoint") == 1
    assert "No space left on device" in said.out + said.err and not list(tmp_path.iterdir())
