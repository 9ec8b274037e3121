"""`pip install .` gives a package whose Python API runs from any folder: the README's example
outside the checkout, and the aggregation command as a console script."""

import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_pip_install_runs_the_readme_example_outside_the_checkout(tmp_path):
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    source = tmp_path / "source"  # only what the package is built from: a file it forgets fails here
    source.mkdir()
    for name in ("pyproject.toml", "README.md", *(m + ".py" for m in project["tool"]["setuptools"]["py-modules"])):
        shutil.copy(os.path.join(ROOT, name), source / name)
    for package in project["tool"]["setuptools"]["packages"]:
        shutil.copytree(os.path.join(ROOT, package), source / package, ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    built = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            "--no-index", "--target", str(site), str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    elsewhere = tmp_path / "notebook"
    elsewhere.mkdir()
    with open(os.path.join(ROOT, "README.md")) as f:
        example = re.findall(r"```python\n(.*?)```", f.read(), re.S)[0]
    env = dict(os.environ, PYTHONPATH=str(site))
    script = example + "import mbemlib\nprint(mbemlib.__file__)\nprint(list(result.labels))\n"
    ran = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    where, labels = ran.stdout.strip().splitlines()[-2:]
    assert where.startswith(str(site))  # the installed copy, not the checkout's
    assert labels == "['cat', 'dog', 'cat']"
    answers = elsewhere / "answers.csv"
    answers.write_text("item,worker,label\na,w1,cat\na,w2,cat\nb,w1,dog\nb,w2,cat\n")
    command = subprocess.run([str(site / "bin" / "mbem-aggregate"), str(answers), "--method", "mv"], cwd=elsewhere,
                             env=env, capture_output=True, text=True)
    assert command.returncode == 0, command.stderr
    assert command.stdout.splitlines()[0].startswith("item,")
