"""The command-line scripts end to end, as subprocesses, on a tiny text."""
import os
import subprocess
import sys

import torch

from conftest import ROOT, TINY_MODEL, run_script


def train_tiny(workdir, *extra):
    return run_script("train.py", "--dataset=tiny", "--data_root=data", "--out_dir=out", "--max_iters=20",
                      "--eval_interval=10", *TINY_MODEL, *extra, cwd=workdir)


def test_prepare_train_sample(workdir):
    result = run_script("prepare.py", "--input", "tiny.txt", "--name", "tiny2", cwd=workdir)
    assert "train.bin" in result.stdout
    result = train_tiny(workdir)
    assert "step 20: train loss" in result.stdout
    assert (workdir / "out" / "ckpt.pt").exists() and (workdir / "out" / "last.pt").exists()
    result = run_script("sample.py", "--out_dir=out", "--start", "First", "--max_new_tokens=50", "--device=cpu",
                        cwd=workdir)
    assert result.stdout.startswith("First") and len(result.stdout) >= 50


def test_sample_prompt_from_file(workdir):
    train_tiny(workdir)
    (workdir / "prompt.txt").write_text("All:\n")
    result = run_script("sample.py", "--out_dir=out", "--start", "FILE:prompt.txt", "--max_new_tokens=5",
                        "--device=cpu", cwd=workdir)
    assert result.stdout.startswith("All:\n")


def test_sample_piped_into_a_reader_that_stops_early(workdir):
    train_tiny(workdir)
    cmd = [sys.executable, os.path.join(ROOT, "sample.py"), "--out_dir=out", "--max_new_tokens=100000", "--device=cpu"]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    proc.stdout.read(20)  # like `python sample.py | head -c 20`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1  # ended by the closed pipe, long before 100,000 tokens
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_help(workdir):
    assert "--n_layer" in run_script("train.py", "--help", cwd=workdir).stdout
    assert "--top_p" in run_script("sample.py", "--help", cwd=workdir).stdout
    assert "--tokenizer" in run_script("prepare.py", "--help", cwd=workdir).stdout


def assert_one_line_error(result, *words):
    assert result.returncode != 0
    err = result.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err


def test_bad_inputs_give_one_line_errors(workdir):
    (workdir / "broken.py").write_text("n_layer = (\n")
    cases = [
        (("train.py", "--dataset=missing"), ("python prepare.py",)),
        (("train.py", "no_such_config.py"), ("not found",)),
        (("train.py", "broken.py"), ("not valid Python",)),
        (("train.py", "--n_layers=2"), ("did you mean 'n_layer'",)),
        (("train.py", "--max_iters=ten"), ("takes an integer",)),
        (("train.py", "--dataset=tiny", "--block_size=4096", "--device=cpu"), ("too few for block_size",)),
        (("sample.py", "--out_dir=nowhere"), ("no checkpoint",)),
        (("prepare.py", "--input", "missing.txt"), ("not found",)),
    ]
    if not torch.cuda.is_available():  # test_checkpoints covers it on any machine
        cases.append((("train.py", "--dataset=tiny", "--device=cuda"), ("no CUDA GPU",)))
    for args, words in cases:
        assert_one_line_error(run_script(*args, cwd=workdir, check=False), *words)


def test_prompt_with_unknown_characters(workdir):
    train_tiny(workdir)
    result = run_script("sample.py", "--out_dir=out", "--start", "Zebra~", "--device=cpu", cwd=workdir, check=False)
    assert_one_line_error(result, "'~'")
