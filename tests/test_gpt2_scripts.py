"""GPT-2 BPE and GPT-2 weights through the command-line scripts, all offline."""
import json

import pytest

import numpy as np
import torch

from checkpoint import load_checkpoint
from conftest import TINY_MODEL, TINY_TEXT, run_script, save_tiny_hf_gpt2
from test_scripts import assert_one_line_error
from tokenizer import GPT2Tokenizer, tiktoken_cache_names


def test_gpt2_bpe_prepares_trains_and_samples_offline(bpe_workdir):
    folder = bpe_workdir / "data" / "tiny_bpe"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257 and meta["dtype"] == "uint16"
    tokens = np.concatenate([np.fromfile(folder / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    assert GPT2Tokenizer().decode(tokens.tolist()) == TINY_TEXT
    assert len(tokens) == meta["train_tokens"] + meta["val_tokens"] < len(TINY_TEXT) / 2  # BPE: words, not letters

    result = run_script("train.py", "--dataset=tiny_bpe", "--out_dir=out", "--max_iters=10", "--eval_interval=10",
                        *TINY_MODEL, cwd=bpe_workdir)
    assert "step 10: train loss" in result.stdout and "ppl" in result.stdout
    assert load_checkpoint(str(bpe_workdir / "out" / "ckpt.pt"))["tokenizer"]["tokenizer"] == "gpt2"
    result = run_script("sample.py", "--out_dir=out", "--start", "First Citizen:", "--max_new_tokens=20",
                        "--device=cpu", cwd=bpe_workdir)
    assert result.stdout.startswith("First Citizen:") and len(result.stdout) > len("First Citizen:") + 20


def test_missing_bpe_files_offline_is_a_one_line_error(tmp_path, offline, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    (tmp_path / "tiny.txt").write_text(TINY_TEXT)
    result = run_script("prepare.py", "--input", "tiny.txt", "--tokenizer", "gpt2", cwd=tmp_path, check=False)
    names = tiktoken_cache_names()
    assert_one_line_error(result, "TIKTOKEN_CACHE_DIR", names["vocab.bpe"], names["encoder.json"], "README")


def test_fine_tune_from_a_local_safetensors_file(bpe_workdir):
    hf = save_tiny_hf_gpt2(bpe_workdir / "hf")
    result = run_script("train.py", "--dataset=tiny_bpe", "--out_dir=out", "--init_from=hf/model.safetensors",
                        "--max_iters=2", "--eval_interval=2", "--learning_rate=1e-4", "--decay_lr=false",
                        *TINY_MODEL, cwd=bpe_workdir)
    assert "step 2: train loss" in result.stdout
    state = load_checkpoint(str(bpe_workdir / "out" / "last.pt"))
    config = state["model_config"]
    assert (config["n_layer"], config["n_embd"], config["activation"]) == (2, 32, "gelu_tanh")
    assert config["block_size"] == 16 and state["model"]["wpe.weight"].shape == (16, 32)  # cropped from 64
    start, tuned = hf.transformer.wte.weight, state["model"]["wte.weight"][:50257]  # the rows past it: padding
    assert not torch.equal(start, tuned) and torch.allclose(start, tuned, atol=1e-3)  # trained from these weights
    result = run_script("sample.py", "--out_dir=out", "--start", "All:", "--max_new_tokens=5", "--device=cpu",
                        cwd=bpe_workdir)
    assert result.stdout.startswith("All:")


def test_sample_from_gpt2_in_a_folder(bpe_workdir):
    hf = save_tiny_hf_gpt2(bpe_workdir / "hf")
    result = run_script("sample.py", "--init_from", "hf", "--start", "Speak, speak.", "--max_new_tokens=8",
                        "--temperature=0", "--device=cpu", "--dtype=float32", cwd=bpe_workdir)
    tokenizer = GPT2Tokenizer()
    ids = torch.tensor([tokenizer.encode("Speak, speak.")])
    expected = hf.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=hf.config.eos_token_id)
    assert result.stdout == tokenizer.decode(expected[0].tolist()) + "\n"


def test_bad_init_from_gives_one_line_errors(bpe_workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing downloaded yet
    (bpe_workdir / "tiny.txt").write_text(TINY_TEXT)
    run_script("prepare.py", "--input", "tiny.txt", "--name", "tiny_char", cwd=bpe_workdir)
    train = ("train.py", "--dataset=tiny_bpe", *TINY_MODEL)
    cases = [
        ((*train, "--init_from=gpt3"), ("neither scratch, resume", "gpt2-medium")),
        ((*train, "--init_from=missing/model.safetensors"), ("missing/model.safetensors",)),
        (("train.py", "--dataset=tiny_char", "--init_from=gpt2", *TINY_MODEL), ("--tokenizer gpt2",)),
        (("sample.py", "--init_from=gpt3"), ("--init_from takes gpt2", "--out_dir")),
        (("sample.py", "--init_from=missing.safetensors"), ("missing.safetensors",)),
    ]
    for args, words in cases:
        assert_one_line_error(run_script(*args, cwd=bpe_workdir, check=False), *words)

    result = run_script(*train, "--init_from=gpt2", cwd=bpe_workdir, check=False)
    note, error = result.stderr.strip().splitlines()  # what it tried, then one line of what to do
    assert result.returncode == 1 and note.startswith("downloading https://huggingface.co/")
    assert error.startswith("error: download of https://huggingface.co/") and "--init_from=PATH/TO/FOLDER" in error
    assert not list((tmp_path / "cache").rglob("*.part*"))  # the failed download left nothing behind


def test_eval_only_scores_gpt2_weights_as_released(bpe_workdir):
    hf = save_tiny_hf_gpt2(bpe_workdir / "hf")
    result = run_script("train.py", "--dataset=tiny_bpe", "--init_from=hf", "--eval_only=true", "--device=cpu",
                        "--dtype=float32", "--batch_size=2", cwd=bpe_workdir)
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("val loss ") and "(hf, iteration ?)" in line
    # the figure is the mean loss over every val target, each scored once, with Hugging Face's model too:
    # consecutive windows of its 64 positions, and the tail's new targets in one last window
    val = torch.from_numpy(np.fromfile(bpe_workdir / "data" / "tiny_bpe" / "val.bin", dtype=np.uint16).astype(np.int64))
    n = len(val) - 1

    def losses(start):
        window = val[start:start + 65]
        with torch.no_grad():
            logp = hf(window[None, :-1]).logits[0].log_softmax(-1)
        return -logp[range(64), window[1:]]

    scored = [losses(s) for s in range(0, n - 63, 64)] + ([losses(n - 64)[64 - n % 64:]] if n % 64 else [])
    assert float(line.split()[2]) == pytest.approx(torch.cat(scored).mean().item(), abs=1e-4)
