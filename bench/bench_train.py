"""Training and inference speed of the release's ResNet on this CPU: this project's trainer
(resnet.train) against a plain hybridized Gluon loop of the same network, in the same run.

The plain loop is the way most MXNet code is written: NAG, the soft-target loss, the same
augmentation done inline, a fresh nd.array per batch, trainer.step every step, a default
hybridize(), and mxnet's default thread count. Each variant runs in its own child process
(its peak memory is its own); a third, plain+threads, is the plain loop with our thread setting.

    python bench/bench_train.py [--depth 20] [--batches 128,500] [--images 5000] [--epochs 2]

The last line reads: train img/s: <ours> plain-gluon img/s: <plain> ratio: <ours/plain> (batch 128).
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def synthetic(n, rng):
    import numpy as np

    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), np.eye(10)[rng.integers(0, 10, n)]


def ours(args):
    import resnet  # first: it sets OMP_NUM_THREADS before mxnet loads (as MBEM.py's order does)

    # isort: split
    import mxnet as mx
    import numpy as np

    images, targets = synthetic(args.images, np.random.default_rng(0))
    net, history = resnet.train(images, targets, 10, depth=args.depth, epochs=args.epochs,
                                batch_size=args.batch, progress=False)
    start = time.perf_counter()
    resnet.predict_proba(net, images, [mx.cpu()], batch_size=args.batch)
    return history[-1]["img_per_s"], len(images) / (time.perf_counter() - start)


def plain(args):
    import mxnet as mx  # first: mxnet's default threading, as plain code gets it
    import numpy as np
    from mxnet import autograd, gluon

    import resnet

    rng = np.random.default_rng(0)
    images, targets = synthetic(args.images, rng)
    net = resnet.ResNet(args.depth, 10)
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), "nag",
                            {"learning_rate": 0.5 * args.batch / 500, "momentum": 0.9, "wd": 1e-4})
    steps = len(images) // args.batch
    for _ in range(args.epochs):
        order = rng.permutation(len(images))
        start = time.perf_counter()
        for step in range(steps):
            idx = order[step * args.batch:(step + 1) * args.batch]
            x = mx.nd.array(resnet.augment(images[idx], rng).astype(np.float32))
            q = mx.nd.array(targets[idx])
            with autograd.record():
                loss = -(q * net(x)).sum(axis=1)
            loss.backward()
            trainer.step(args.batch)
        mx.nd.waitall()
        train_speed = steps * args.batch / (time.perf_counter() - start)
    start = time.perf_counter()
    for b in range(0, len(images), args.batch):
        net(mx.nd.array(images[b:b + args.batch].astype(np.float32))).asnumpy()
    return train_speed, len(images) / (time.perf_counter() - start)


def print_augmentation_speed(batch=128, repeats=50):
    """The augmentation runs in a background thread; it must outpace training by a wide margin."""
    import numpy as np

    import resnet

    rng = np.random.default_rng(0)
    images, _ = synthetic(batch, rng)
    start = time.perf_counter()
    for _ in range(repeats):
        resnet.augment(images, rng).astype(np.float32)
    speed = batch * repeats / (time.perf_counter() - start)
    print(f"augmentation (pad 4, crop, mirror, to float32): {speed:.0f} img/s on one core")


def child(variant, batch, args, threads=None):
    """Run one variant in a fresh process; its img/s and its own peak RSS (os.wait4).
    threads=None leaves OMP_NUM_THREADS unset, so mxnet picks its default."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--batch", str(batch),
           "--depth", str(args.depth), "--images", str(args.images), "--epochs", str(args.epochs)]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(f"{variant} batch {batch} failed (status {status})")
    train_speed, infer_speed = json.loads(out.strip().splitlines()[-1])
    return train_speed, infer_speed, usage.ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--batches", default="128,500", help="comma-separated batch sizes")
    parser.add_argument("--images", type=int, default=5000, help="synthetic 32 x 32 images per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="the last epoch is timed (the first warms up)")
    parser.add_argument("--child", choices=["ours", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=128, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps((ours if args.child == "ours" else plain)(args)))
        return
    batches = [int(b) for b in args.batches.split(",")]
    print_augmentation_speed()
    speeds = {}
    print(f"ResNet-{args.depth}, CPU, {args.images} synthetic images, epoch {args.epochs} of {args.epochs} timed")
    # "plain+threads" is the plain loop given our thread setting: it shows how much of the gain
    # is that one setting and how much the rest of the trainer.
    variants = (("ours", "ours", None), ("plain", "plain", None), ("plain+threads", "plain", os.cpu_count()))
    for batch in batches:
        for name, variant, threads in variants:
            train_speed, infer_speed, peak = child(variant, batch, args, threads)
            speeds[name, batch] = train_speed
            print(f"batch {batch:4d} {name:13s} train img/s {train_speed:7.1f}  inference img/s {infer_speed:7.1f}  "
                  f"peak RSS MB {peak:6.0f}", flush=True)
    ref = 128 if 128 in batches else batches[0]
    print(f"ratio against plain+threads: {speeds['ours', ref] / speeds['plain+threads', ref]:.2f} (batch {ref})")
    print(f"train img/s: {speeds['ours', ref]:.1f} plain-gluon img/s: {speeds['plain', ref]:.1f} "
          f"ratio: {speeds['ours', ref] / speeds['plain', ref]:.2f}")


if __name__ == "__main__":
    main()
