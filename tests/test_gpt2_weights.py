"""GPT-2 weights: the same logits and greedy tokens as Hugging Face's GPT-2, from every kind of source."""
import json
import os

import pytest
import torch

import checkpoint as gpt2
import train
from common import UserError
from checkpoint import load_pretrained
from model import GPT, GPTConfig
from conftest import save_tiny_hf_gpt2
from optim import Distributed
from settings import TrainConfig


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny random GPT2LMHeadModel saved with save_pretrained, and the model itself."""
    folder = tmp_path_factory.mktemp("hf-gpt2")
    return folder, save_tiny_hf_gpt2(folder)


def prompt(vocab_size, T=20, seed=1):
    return torch.randint(0, vocab_size, (2, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("source", ["folder", "file"])
def test_logits_and_greedy_tokens_equal_hugging_face(hf_folder, source):
    folder, hf = hf_folder
    path = folder if source == "folder" else folder / "model.safetensors"
    model = load_pretrained(str(path)).eval()
    assert model.config.activation == "gelu_tanh" and model.config.block_size == 64
    x = prompt(hf.config.vocab_size)
    with torch.no_grad():
        ours, _ = model(x)
        theirs = hf(x).logits
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0), (ours - theirs).abs().max()

    start = x[:1, :5]
    expected = hf.generate(start, max_new_tokens=30, do_sample=False, pad_token_id=hf.config.eos_token_id)
    assert expected.shape[1] == 35  # no early stop at end-of-text, so all 30 tokens are compared
    assert torch.equal(model.generate(start, 30, temperature=0), expected)


def rewrite_safetensors(src, dst, rename):
    """Copy a safetensors file with each tensor renamed by rename(name, tensor) -> {name: tensor}."""
    from safetensors.torch import load_file, save_file
    tensors = {}
    for name, t in load_file(str(src)).items():
        tensors.update(rename(name, t))
    save_file(tensors, str(dst))


def test_openai_names_and_mask_buffers_load(hf_folder, tmp_path):
    """OpenAI's files have no 'transformer.' prefix and carry attention masks and a copy of the head."""
    folder, hf = hf_folder

    def openai_layout(name, t):
        out = {name.removeprefix("transformer."): t}
        if name.endswith("attn.c_attn.weight"):
            block = name.removeprefix("transformer.").rsplit(".", 2)[0]  # h.N.attn
            out[f"{block}.bias"] = torch.ones(1, 1, 64, 64).tril()
            out[f"{block}.masked_bias"] = torch.tensor(-1e4)
        if name == "transformer.wte.weight":
            out["lm_head.weight"] = t.clone()
        return out

    rewrite_safetensors(folder / "model.safetensors", tmp_path / "model.safetensors", openai_layout)
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    model = load_pretrained(str(tmp_path)).eval()
    x = prompt(hf.config.vocab_size)
    with torch.no_grad():
        assert torch.allclose(model(x)[0], hf(x).logits, atol=1e-4, rtol=0)


def test_a_bare_file_takes_its_sizes_from_the_tensors(hf_folder, tmp_path, monkeypatch):
    folder, hf = hf_folder
    bare = tmp_path / "weights.safetensors"
    bare.write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(UserError, match="config.json beside it"):  # 2 layers x 32 wide is no GPT-2 size
        load_pretrained(str(bare))
    monkeypatch.setitem(gpt2.GPT2_SIZES, "gpt2-tiny", dict(n_layer=2, n_head=2, n_embd=32))
    model = load_pretrained(str(bare)).eval()
    c = model.config
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size) == (2, 2, 32, 64, hf.config.vocab_size)
    x = prompt(hf.config.vocab_size)
    with torch.no_grad():
        assert torch.allclose(model(x)[0], hf(x).logits, atol=1e-4, rtol=0)


def test_a_name_downloads_once_into_the_cache(hf_folder, tmp_path, monkeypatch):
    """A hub name is fetched (here from a file:// 'hub') into the cache, then read from there."""
    folder, hf = hf_folder
    hub = tmp_path / "hub" / "gpt2"
    hub.mkdir(parents=True)
    for file in ("config.json", "model.safetensors"):
        (hub / file).write_bytes((folder / file).read_bytes())
    monkeypatch.setattr(gpt2, "HUB_URL", (tmp_path / "hub").as_uri() + "/{name}/{file}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = load_pretrained("gpt2")
    cached = tmp_path / "cache" / "scratchgpt" / "gpt2"
    assert sorted(os.listdir(cached)) == ["config.json", "model.safetensors"]  # no .part files left
    for file in hub.iterdir():
        file.unlink()
    second = load_pretrained("gpt2")  # the hub is empty now: this comes from the cache
    assert torch.equal(first.wte.weight, second.wte.weight)
    assert torch.equal(first.wte.weight[:50257], hf.transformer.wte.weight)
    assert not first.wte.weight[50257:].any()  # the padded rows: zeros, never read


def test_a_failed_download_leaves_nothing_and_suggests_a_local_path(tmp_path, monkeypatch):
    monkeypatch.setattr(gpt2, "HUB_URL", (tmp_path / "nowhere").as_uri() + "/{name}/{file}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="--init_from=PATH/TO/FOLDER"):
        load_pretrained("gpt2-medium")
    folder = tmp_path / "cache" / "scratchgpt" / "gpt2-medium"
    assert not folder.exists() or os.listdir(folder) == []


@pytest.mark.parametrize("content, why", [
    (b"\x01\x02", "shorter than 8 bytes"),
    ((10 ** 9).to_bytes(8, "little") + b"{}", "past the end"),
    ((4).to_bytes(8, "little") + b"nope", "not JSON"),
    ((2).to_bytes(8, "little") + b"{}", "no tensors"),
])
def test_a_file_that_is_not_safetensors_is_a_clear_error(tmp_path, content, why):
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(UserError, match=why):
        load_pretrained(str(tmp_path / "model.safetensors"))


def test_tensor_bytes_must_match_their_shape(tmp_path):
    header = json.dumps({"wte.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 32]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(32))
    with pytest.raises(UserError, match="do not match its shape"):
        load_pretrained(str(tmp_path / "model.safetensors"))


def test_an_unsupported_config_is_refused(hf_folder, tmp_path):
    folder, _ = hf_folder
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"activation_function": "relu"}))
    with pytest.raises(UserError, match="activation_function 'relu'"):
        load_pretrained(str(tmp_path))


def test_missing_source_names_the_choices(tmp_path):
    with pytest.raises(UserError, match="gpt2, gpt2-medium"):
        load_pretrained("gpt3")
    with pytest.raises(UserError, match="holds no model.safetensors"):
        load_pretrained(str(tmp_path))


def test_crop_block_size_keeps_the_first_positions():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=16, block_size=32)).eval()
    x = torch.randint(0, 50, (2, 8))
    before, _ = model(x)
    config = model.config
    model.crop_block_size(8)
    assert config.block_size == 32 and model.config.block_size == 8  # the old config is not changed
    assert model.wpe.weight.shape == (8, 16)
    after, _ = model(x)
    assert torch.allclose(before, after)
    with pytest.raises(ValueError, match="longer than block_size 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="between 1 and 8"):
        model.crop_block_size(16)
    assert model.generate(x[:1], 20, temperature=0).shape == (1, 28)  # the cache follows the new size


def test_one_process_per_machine_downloads_gpt2(monkeypatch):
    calls = []
    monkeypatch.setattr(gpt2, "resolve", lambda source: calls.append(("resolve", source)))
    monkeypatch.setattr(gpt2, "load_pretrained", lambda source, dropout: calls.append("load") or GPT(
        GPTConfig(vocab_size=50257, n_layer=1, n_head=2, n_embd=16, block_size=8)))

    class Rank(Distributed):
        def barrier(self):
            calls.append("barrier")

    meta = {"tokenizer": "gpt2", "vocab_size": 50257}
    cfg, model_cfg = TrainConfig(init_from="gpt2"), GPTConfig(block_size=8)
    train.init_model(cfg, model_cfg, meta, Rank(rank=1, local_rank=1, world_size=2))
    assert calls == ["barrier", "load"]
    calls.clear()
    train.init_model(cfg, model_cfg, meta, Rank(rank=2, local_rank=0, world_size=4))
    assert calls == [("resolve", "gpt2"), "barrier", "load"]


def test_gpt2_downloads_into_files_of_unique_names(hf_folder, tmp_path, monkeypatch):
    """Processes that share a cache folder each write a file of their own, renamed once whole."""
    folder, _ = hf_folder
    hub = tmp_path / "hub" / "gpt2"
    hub.mkdir(parents=True)
    for file in ("config.json", "model.safetensors"):
        (hub / file).write_bytes((folder / file).read_bytes())
    monkeypatch.setattr(gpt2, "HUB_URL", (tmp_path / "hub").as_uri() + "/{name}/{file}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    renames, real_replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: renames.append((str(a), str(b))) or real_replace(a, b))
    load_pretrained("gpt2")
    cached = tmp_path / "cache" / "scratchgpt" / "gpt2"
    assert sorted(b for _, b in renames) == [str(cached / "config.json"), str(cached / "model.safetensors")]
    assert all(a == f"{b}.{os.getpid()}.part" for a, b in renames)
