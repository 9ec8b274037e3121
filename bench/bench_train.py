"""Training and inference speed of the release's ResNet on this machine, every trainer in the
same run, each variant in its own child process (its peak memory is its own):

- mxnet: this project's MXNet trainer (resnet.train);
- plain-gluon: the way most MXNet code is written (NAG, the soft-target loss, the same
  augmentation inline, a fresh nd.array per batch, a default hybridize(), mxnet's default
  threads), and plain+threads, the same given our thread setting (batch 128 only);
- torch fp32, torch fp32 compiled, torch bf16, torch bf16 compiled: resnet_torch.train. bf16
  rows run only where the CPU computes bf16 natively (AVX512-BF16 or AMX): elsewhere it is
  emulated, many times slower than fp32, and the presets' `--precision auto` does not choose it.

    python bench/bench_train.py [--depth 20] [--batches 128,500] [--images 5000] [--epochs 2]

The last line reads `train img/s mxnet: <A> torch: <B> ratio: <B/A> (<configuration>)` at batch
128, where torch is the precision the `cpu` preset uses here (auto), compiled or not, whichever is
faster on this machine.
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def synthetic(n, rng, size=32):
    import numpy as np

    return rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8), np.eye(10)[rng.integers(0, 10, n)]


def ours(args):
    import resnet  # first: it sets OMP_NUM_THREADS before mxnet loads (as MBEM.py's order does)

    # isort: split
    import numpy as np

    images, targets = synthetic(args.images, np.random.default_rng(0), args.size)
    model, history = resnet.train(images, targets, 10, depth=args.depth, epochs=args.epochs,
                                  batch_size=args.batch, progress=False, imagenet=args.imagenet)
    resnet.predict_proba(model, images[:args.batch], batch_size=args.batch)  # warm-up: graph for eval
    start = time.perf_counter()
    resnet.predict_proba(model, images, batch_size=args.batch)
    return history[-1]["img_per_s"], len(images) / (time.perf_counter() - start)


def torch_variant(args):
    import numpy as np

    import resnet_torch

    images, targets = synthetic(args.images, np.random.default_rng(0), args.size)
    model, history = resnet_torch.train(images, targets, 10, depth=args.depth, epochs=args.epochs,
                                        batch_size=args.batch, precision=args.precision, compile=args.compile,
                                        progress=False, imagenet=args.imagenet)
    resnet_torch.predict_proba(model, images[:args.batch], batch_size=args.batch)  # warm-up: compiles eval mode
    start = time.perf_counter()
    resnet_torch.predict_proba(model, images, batch_size=args.batch)
    return history[-1]["img_per_s"], len(images) / (time.perf_counter() - start)


def plain(args):
    import mxnet as mx  # first: mxnet's default threading, as plain code gets it
    import numpy as np
    from mxnet import autograd, gluon

    import resnet
    from mbemlib import pipeline

    rng = np.random.default_rng(0)
    images, targets = synthetic(args.images, rng)
    net = resnet.ResNet(args.depth, 10)
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=pipeline.INIT_MAGNITUDE))
    net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), "nag", {"learning_rate": pipeline.base_lr(args.batch),
                                                          "momentum": pipeline.MOMENTUM, "wd": pipeline.WEIGHT_DECAY})
    steps = len(images) // args.batch
    for _ in range(args.epochs):
        order = rng.permutation(len(images))
        start = time.perf_counter()
        for step in range(steps):
            idx = order[step * args.batch:(step + 1) * args.batch]
            x = mx.nd.array(pipeline.augment(images[idx], rng).astype(np.float32))
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


def print_pipeline_speed(batch=128, images=20000):
    """The input pipeline runs in a background thread; it must outpace training by a wide margin.
    Timed: augmentation alone, and the whole iterator (shuffle, augment, float32, queue) drained."""
    import numpy as np

    from mbemlib import pipeline

    rng = np.random.default_rng(0)
    data, targets = synthetic(images, rng)
    start = time.perf_counter()
    for b in range(0, images, batch):
        pipeline.augment(data[b:b + batch], rng)
    augment = images / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in pipeline.batches(data, batch, rng, shuffle=True, pad=4, drop_last=True):
        pass
    whole = images / (time.perf_counter() - start)
    print(f"input pipeline, batch {batch}: augmentation {augment:.0f} img/s, whole iterator {whole:.0f} img/s")


def child(variant, batch, args, threads=None, precision="fp32", compile=False):
    """Run one variant in a fresh process; its img/s and its own peak RSS (os.wait4).
    threads=None leaves OMP_NUM_THREADS unset, so mxnet picks its default."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--batch", str(batch),
           "--depth", str(args.depth), "--images", str(args.images), "--epochs", str(args.epochs),
           "--precision", precision, "--compile" if compile else "--no-compile", "--size", str(args.size)]
    cmd += ["--imagenet"] if args.imagenet else []
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
    parser.add_argument("--imagenet", action="store_true", help="ResNet-18/34 in the ImageNet form (--depth 18) "
                                                                    "at --size; the MXNet and torch trainers only")
    parser.add_argument("--size", type=int, default=32, help="image side (ImageNet: 224)")
    parser.add_argument("--child", choices=["ours", "plain", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=128, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"ours": ours, "plain": plain, "torch": torch_variant}[args.child](args)))
        return
    import resnet_torch

    batches = [int(b) for b in args.batches.split(",")]
    ref = 128 if 128 in batches else batches[0]
    print_pipeline_speed(ref)
    native = resnet_torch.native_bf16(resnet_torch.to_devices([])[0])
    preset = resnet_torch.resolve_precision("auto")  # what `--preset cpu` trains in on this machine
    print(f"ResNet-{args.depth}{' (ImageNet form)' if args.imagenet else ''} at {args.size} x {args.size}, "
          f"{resnet_torch.cpu_capability()} CPU ({os.cpu_count()} cores), {args.images} "
          f"synthetic images, epoch {args.epochs} of {args.epochs} timed; native bf16: {'yes' if native else 'no'}")
    variants = [("mxnet", "ours", {})]
    if not args.imagenet:
        variants += [("plain-gluon", "plain", {}), ("plain+threads", "plain", {"threads": os.cpu_count()})]
    variants += [(f"torch {p}{' compiled' if c else ''}", "torch", {"precision": p, "compile": c})
                 for p in ("fp32", "bf16") for c in (False, True) if p == "fp32" or native]
    speeds = {}
    for batch in batches:
        for name, variant, options in variants:
            if name.startswith("plain") and batch != ref:
                continue
            train_speed, infer_speed, peak = child(variant, batch, args, **options)
            speeds[name, batch] = train_speed
            print(f"batch {batch:4d} {name:21s} train img/s {train_speed:7.1f}  inference img/s {infer_speed:7.1f}  "
                  f"peak RSS MB {peak:6.0f}", flush=True)
    if not args.imagenet:
        print(f"mxnet against plain-gluon: {speeds['mxnet', ref] / speeds['plain-gluon', ref]:.2f} "
              f"(against plain+threads: {speeds['mxnet', ref] / speeds['plain+threads', ref]:.2f}), batch {ref}")
    # torch.compile pays on some CPUs and costs on others: the ratio takes the faster of the two
    torch_name = max((f"torch {preset}", f"torch {preset} compiled"), key=lambda name: speeds[name, ref])
    print(f"train img/s mxnet: {speeds['mxnet', ref]:.1f} torch: {speeds[torch_name, ref]:.1f} "
          f"ratio: {speeds[torch_name, ref] / speeds['mxnet', ref]:.2f} ({torch_name[6:]})")


if __name__ == "__main__":
    main()
