"""Generation in each precision, whatever this CPU can do: the capability check is forced both ways."""
from dataclasses import asdict

import pytest
import torch

import common
import generate
from checkpoint import save_checkpoint
from conftest import run_script
from generate import load
from model import generate_tokens
from model import GPT, GPTConfig
from tokenizer import CharTokenizer

CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def tiny_model(pos_encoding="learned"):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=len(CHARS), n_layer=2, n_head=2, n_embd=32, block_size=16, pos_encoding=pos_encoding)
    return GPT(config).eval()


@pytest.fixture
def checkpoint_dir(tmp_path):
    model = tiny_model("rope")
    save_checkpoint({"model": model.state_dict(), "model_config": asdict(model.config),
                     "tokenizer": CharTokenizer(CHARS).to_meta()}, str(tmp_path / "ckpt.pt"))
    return tmp_path


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("dtype", ["auto", "float32", "bfloat16"])
def test_each_precision_generates_whatever_the_cpu(checkpoint_dir, monkeypatch, native, dtype):
    monkeypatch.setattr(common, "cpu_has_bf16_matmul", lambda: native)
    gen = load(str(checkpoint_dir), device="cpu", dtype=dtype)
    expected = {"auto": torch.bfloat16 if native else torch.float32, "float32": torch.float32,
                "bfloat16": torch.bfloat16}[dtype]
    assert gen.model.wte.weight.dtype == expected
    text = gen("ROMEO:", max_new_tokens=40, seed=0)  # past block_size 16: the rotary cache slides
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 40
    assert gen("ROMEO:", num_samples=2, max_new_tokens=5, seed=0)[0].startswith("ROMEO:")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cached_steps_give_the_logits_of_recomputing(dtype):
    model = tiny_model("rope").to(dtype)
    idx = torch.randint(0, len(CHARS), (1, 30))  # past block_size: the cache slides
    cache = model.new_cache(1)
    assert cache.k.dtype == dtype
    with torch.no_grad():
        full = model(idx)[0].float()  # each position sees the 16 before it, as the cache keeps
        steps = [model(idx[:, :3], cache=cache)[0]]
        steps += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(3, 30)]
    cached = torch.cat(steps, dim=1).float()
    # bf16 rounds the two paths differently (logits up to about 1 here); a wrong cache is off by far more.
    assert (cached - full).abs().max().item() < (1e-5 if dtype == torch.float32 else 0.05)


def test_one_sample_runs_without_onednn_and_the_caller_finds_the_switch_as_it_was(monkeypatch):
    gen = generate.Generator(tiny_model(), CharTokenizer(CHARS), torch.device("cpu"))
    seen, layer_norm = [], torch.nn.functional.layer_norm

    def recording_layer_norm(*args, **kwargs):
        seen.append(torch.backends.mkldnn.enabled)
        return layer_norm(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "layer_norm", recording_layer_norm)
    for rows in (1, 3):
        seen.clear()
        for _ in gen.stream_batch("ab", num_samples=rows, max_new_tokens=4):
            assert torch.backends.mkldnn.enabled  # switched off only while the model works
        assert len(seen) == 4 * (2 * 2 + 1)  # four passes, each with two LayerNorms per block and the final one
        assert seen == [rows > 1] * len(seen)  # one row at a time: PyTorch's own kernels


def test_the_switch_comes_back_when_a_step_fails():
    model = tiny_model()  # learned positions stop at block_size 16
    cache = model.new_cache(1)
    with pytest.raises(ValueError, match="block_size"):
        with generate.without_onednn():
            model(torch.zeros(1, 17, dtype=torch.long), cache=cache)
    assert torch.backends.mkldnn.enabled


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sample_script_generates_in_each_precision(checkpoint_dir, dtype):
    result = run_script("sample.py", f"--out_dir={checkpoint_dir}", "--start", "ROMEO:", "--max_new_tokens=30",
                        "--device=cpu", f"--dtype={dtype}", cwd=checkpoint_dir)
    assert result.stdout.startswith("ROMEO:") and len(result.stdout) == len("ROMEO:") + 30 + 1
