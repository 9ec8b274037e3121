import os
import subprocess
import sys
from importlib.util import find_spec

import pytest

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))  # before any test module loads mxnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")
CIFAR_JPEG = os.path.join(SHARED_DATA, "cifar10-jpeg.tar.gz")

# The torch-only environment (make setup-torch) has no MXNet: tests of the MXNet backend skip there.
HAVE_MXNET = find_spec("mxnet") is not None
needs_mxnet = pytest.mark.skipif(not HAVE_MXNET, reason="MXNet is not installed (the torch-only environment)")


def shared_path(*parts):
    """A path under ../shared/data, or skip the test when it is not there (a user's fresh clone)."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"{path} not present (../shared is only beside developer and CI checkouts)")
    return path


def run_script(script, *args, env=None):
    """`python <script> <args>` from the repository root, as a user types it; output captured as text."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=env)
