"""The GPU check, one command for a lent GPU (docs/backends.md, "A GPU check"):

    python bench/gpu_check.py OUT_DIR [--source CIFAR.tar.gz] [--minutes 9]

1. the device and the versions;
2. tests/test_cuda.py (one step on the GPU against the CPU's, bf16 and channels-last training,
   torch.compile or its fallback);
3. ResNet-20 training speed at batch 500 with the input pipeline (pipeline.batches: one background
   thread augments the next batch), fp32, bf16 and bf16 compiled, against this machine's CPU in
   torch fp32, measured in the same run; the last line has bench/bench_train.py's form;
4. the `paper` preset's r = 1 point for seed 0 on the GPU (the release's protocol: two stages, 60
   epochs over all 50,000 images, MV and WMV's shared model, then MBEM) into OUT_DIR/paper-r1,
   resumable: each finished cell is saved, and the same command on a later GPU continues it.
   CIFAR-10 comes from --source, a copy of ../shared/data/cifar10-jpeg.tar.gz carried along.

Everything stops by --minutes (default 9): the run is interrupted with SIGINT, which keeps its
finished cells. Without CUDA the same command runs its steps on the CPU at a toy size (--dry-run).
"""

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def versions():
    import numpy as np
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    print(f"device: {device}; python {platform.python_version()}, torch {torch.__version__} (CUDA "
          f"{torch.version.cuda}), numpy {np.__version__}, {os.cpu_count()} CPU cores", flush=True)
    return torch.cuda.is_available()


def cuda_tests(cuda, seconds):
    env = dict(os.environ) if cuda else dict(os.environ, MBEM_TEST_DEVICE="cpu")
    result = subprocess.run([sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider",
                             os.path.join(ROOT, "tests", "test_cuda.py")], cwd=ROOT, env=env, timeout=seconds,
                            capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    summary = [line for line in lines if line.startswith(("SKIPPED", "FAILED", "ERROR")) or " passed" in line
               or " failed" in line]
    print("tests/test_cuda.py: " + ("\n    ".join(summary) or result.stderr[-2000:]), flush=True)
    if result.returncode:
        print(result.stdout[-4000:], flush=True)
    return result.returncode == 0


def speed(gpus, precision, compile, images, batch):
    """Training img/s of ResNet-20 on synthetic 32 x 32 images (the second epoch: the first warms up
    and compiles), the input pipeline included."""
    import numpy as np

    import resnet_torch

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, 3, 32, 32), dtype=np.uint8)
    targets = np.eye(10)[rng.integers(0, 10, images)]
    _, history = resnet_torch.train(x, targets, 10, depth=20, epochs=2, batch_size=batch, gpus=gpus,
                                    precision=precision, compile=compile, progress=False)
    return history[-1]["img_per_s"]


def speeds(cuda, dry_run):
    import torch
    from bench_train import print_pipeline_speed

    batch = 500
    print_pipeline_speed(batch, images=5000 if dry_run else 50000)
    torch.set_num_threads(os.cpu_count() or 1)
    cpu = speed([], "fp32", False, 1000 if dry_run else 3000, batch if not dry_run else 100)
    print(f"cpu torch fp32 train img/s {cpu:8.1f} (peer, {torch.get_num_threads()} threads)", flush=True)
    results = {}
    gpus = [0] if cuda else []
    variants = [("fp32", False), ("bf16", False), ("bf16", True)] if cuda else [("fp32", False)]
    for precision, compile in variants:
        name = f"{precision}{' compiled' if compile else ''}"
        results[name] = speed(gpus, precision, compile, 1000 if dry_run else 25000, batch if not dry_run else 100)
        print(f"{'cuda' if cuda else 'cpu'} torch {name:13s} train img/s {results[name]:8.1f} (batch {batch})",
              flush=True)
    best = max(results, key=results.get)
    print(f"train img/s cpu: {cpu:.1f} {'cuda' if cuda else 'cpu'}: {results[best]:.1f} "
          f"ratio: {results[best] / cpu:.2f} ({best})", flush=True)


def paper_point(out, source, cuda, dry_run, deadline):
    """The paper preset's r = 1 point, seed 0, stopped with SIGINT at the deadline (finished cells stay)."""
    # a dry run is a toy of the same command on the CPU: the code path, not the protocol
    plan, folder = ("1:1000", "dry-run") if dry_run else ("1:50000", "paper-r1")
    command = [sys.executable, os.path.join(ROOT, "MBEM.py"), "--preset", "paper", "--backend", "torch",
               "--precision", "auto", "--plan", plan, "--dataset", "folder", "--source", source,
               "--data-dir", os.path.join(tempfile.gettempdir(), "mbem-gpu-cache"),  # decoded images: not in OUT
               "--out", os.path.join(out, folder)]
    command += ["--gpus", "0"] if cuda else []
    command += ["--epochs", "1", "--depth", "8", "--no-compile", "--epoch-images", "labelled"] if dry_run else []
    print("running: " + " ".join(command), flush=True)
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if "epoch" not in line or "img/s" in line:  # the epochs' summary lines, not the bars
                print(line.rstrip()[-300:], flush=True)
            if time.time() > deadline and proc.poll() is None:
                print("time is up: interrupting (finished cells are saved; run the same command to resume)", flush=True)
                proc.send_signal(signal.SIGINT)
                break
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    return proc.returncode


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output folder: paper-r1/ holds the run's results (resumable)")
    parser.add_argument("--source", default=os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg.tar.gz"),
                        help="CIFAR-10 as a class-folder .tar.gz (default ../shared/data/cifar10-jpeg.tar.gz)")
    parser.add_argument("--minutes", type=float, default=9.0, help="stop everything by then (default 9)")
    parser.add_argument("--skip", default="", help="comma-separated steps to skip: tests, speed, paper")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes (what runs without a GPU)")
    args = parser.parse_args()
    deadline = time.time() + 60 * args.minutes
    skip = set(filter(None, args.skip.split(",")))
    os.makedirs(args.out, exist_ok=True)
    sys.path.insert(0, HERE)
    cuda = versions()
    dry_run = args.dry_run or not cuda
    ok = True
    if "tests" not in skip:
        ok &= cuda_tests(cuda, max(30, deadline - time.time()))
    if "speed" not in skip:
        speeds(cuda, dry_run)
    if "paper" not in skip:
        if not os.path.exists(args.source):
            print(f"no {args.source}: copy ../shared/data/cifar10-jpeg.tar.gz beside the checkout and pass --source")
            return 2
        ok &= paper_point(args.out, args.source, cuda, dry_run, deadline) in (0, 130)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
