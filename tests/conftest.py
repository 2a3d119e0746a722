"""Shared fixtures: a tiny prepared dataset and a tiny model config, so tests run in seconds on CPU."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_TEXT = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?

All:
Resolved. resolved.

First Citizen:
First, you know Caius Marcius is chief enemy to the people.
""" * 20

TINY_MODEL = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=4",
              "--device=cpu", "--dtype=float32", "--eval_iters=2", "--log_interval=1"]


def run_script(script, *args, cwd, check=True, timeout=300):
    """Run one of the project's scripts as a user would; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def workdir(tmp_path):
    """A folder holding tiny.txt and a prepared character dataset in data/tiny."""
    (tmp_path / "tiny.txt").write_text(TINY_TEXT)
    from prepare import prepare
    prepare(str(tmp_path / "tiny.txt"), "tiny", "char", data_root=str(tmp_path / "data"))
    return tmp_path
