"""What a per-epoch checkpoint costs (resnet_torch.train writes one after every epoch but the last):
its size and the seconds to write it, for the `cpu` preset's ResNet-20 (CIFAR-10, 10 classes) and
the ImageNet setting's ResNet-18 (1,000 classes), each with its NAG momentum, against the time of
the epoch it follows. The ResNet-20 epoch is timed here (a few batches of the real network);
the ResNet-18 line says how long an epoch must take for the checkpoint to cost under 1% of it.

    python bench/bench_checkpoint.py [--repeats 5] [--folder /tmp]
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import torch

import resnet_torch
from mbemlib.pipeline import Checkpoint


def state_of(depth, classes, imagenet):
    """A trained-looking state: the network's weights and a momentum buffer for each parameter."""
    model = resnet_torch.build(depth, classes, imagenet=imagenet)
    optimizer = resnet_torch.nag(model.net, 0.1)
    for p in model.net.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    rng = np.random.default_rng(0)
    return model, {"net": model.net.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng.bit_generator.state,
                   "torch_rng": torch.get_rng_state(), "update": 1, "log": {"history": [], "best": -1.0,
                                                                             "best_state": None}}


def write_seconds(state, folder, repeats):
    path = os.path.join(folder, "bench.ckpt")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        resnet_torch.save_checkpoint(Checkpoint(path, "bench"), state)
        times.append(time.perf_counter() - start)
    size = os.path.getsize(path)
    os.remove(path)
    return float(np.median(times)), size


def epoch_seconds(images=50_000, batches=6, batch_size=128):
    """ResNet-20's epoch over `images` CIFAR-sized images at this machine's fp32 training speed."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batches * batch_size, 3, 32, 32), dtype=np.uint8)
    targets = np.eye(10)[rng.integers(0, 10, len(x))]
    _, history = resnet_torch.train(x, targets, 10, depth=20, epochs=2, batch_size=batch_size, progress=False)
    return images / history[-1]["img_per_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--folder", default=tempfile.gettempdir(), help="where to write (the disk a run's --out is on)")
    args = p.parse_args()
    epoch = epoch_seconds()
    for name, depth, classes, imagenet in (("ResNet-20, CIFAR-10", 20, 10, False),
                                           ("ResNet-18, ImageNet", 18, 1000, True)):
        _, state = state_of(depth, classes, imagenet)
        seconds, size = write_seconds(state, args.folder, args.repeats)
        line = f"{name}: checkpoint {size / 1e6:.1f} MB, {seconds * 1000:.0f} ms to write"
        if imagenet:
            line += f"; under 1% of an epoch that takes more than {seconds * 100:.0f} s"
        else:
            line += f"; an epoch of 50,000 images here (fp32) {epoch:.0f} s: ratio {seconds / epoch:.2%}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
