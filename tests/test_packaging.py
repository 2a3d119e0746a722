import importlib.metadata
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def listed_modules():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        block = re.search(r"py-modules = \[(.*?)\]", f.read(), re.S).group(1)
    return set(re.findall(r'"(\w+)"', block))


def test_pyproject_installs_every_module():
    # A module left out imports from the checkout but not from a notebook elsewhere.
    on_disk = {name[:-3] for name in os.listdir(ROOT) if name.endswith(".py")}
    assert listed_modules() == on_disk


def test_installed_modules_import_outside_the_checkout(tmp_path):
    try:
        importlib.metadata.distribution("scratchgpt")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the project is not pip-installed here")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import " + ", ".join(sorted(listed_modules()))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1]
