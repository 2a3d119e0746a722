"""Position encodings, encoder blocks and the bigram baseline."""
import math
from dataclasses import asdict

import pytest
import torch

from checkpoint import load_model, save_checkpoint
from model import GPT, GPTConfig, build_model
from model import angle_dtype, apply_rotary, rotary_cos_sin, sinusoidal_table


def test_sinusoidal_table_equals_the_formula():
    table = sinusoidal_table(50, 16)
    for pos in (0, 1, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_rope_scores_depend_only_on_distance():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m, n):
        cos, sin = rotary_cos_sin(torch.tensor([m, n]), 8)
        qm = apply_rotary(q, cos[:1], sin[:1])
        kn = apply_rotary(k, cos[1:], sin[1:])
        return (qm * kn).sum().item()

    assert score(5, 2) == pytest.approx(score(105, 102), abs=1e-5)
    assert score(5, 2) == pytest.approx(score(3, 0), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)


def test_rope_attention_scores_are_shift_invariant_in_the_model():
    """Shift a whole sequence's positions: every attention score stays the same."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=65, n_layer=1, n_head=2, n_embd=16, block_size=32, pos_encoding="rope")
    attn = GPT(config).blocks[0].attn
    x = torch.randn(1, 6, 16)
    q, k, _ = attn.c_attn(x).split(16, dim=2)
    q, k = q.view(1, 6, 2, 8).transpose(1, 2), k.view(1, 6, 2, 8).transpose(1, 2)

    def scores(offset):
        cos, sin = rotary_cos_sin(torch.arange(offset, offset + 6), 8)
        return apply_rotary(q, cos, sin) @ apply_rotary(k, cos, sin).transpose(-2, -1)

    assert torch.allclose(scores(0), scores(17), atol=1e-5)


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "rope"])
def test_each_encoding_trains_and_round_trips(pos_encoding, tmp_path):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=16, n_layer=1, n_head=2, n_embd=16, block_size=8, pos_encoding=pos_encoding)
    model = GPT(config)
    opt = model.configure_optimizer(1e-2, 0.0, (0.9, 0.99))
    pattern = torch.arange(9).repeat(4, 1)  # 0 1 2 ... 8: next token = position + 1
    x, y = pattern[:, :-1], pattern[:, 1:]
    first = model(x, y)[1].item()
    for _ in range(60):
        loss = model(x, y)[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 2
    save_checkpoint({"model": model.state_dict(), "model_config": asdict(config),
                     "tokenizer": {"tokenizer": "char", "vocab_size": 16, "chars": list("abcdefghijklmnop")}},
                    str(tmp_path / "ckpt.pt"))
    loaded, _, _ = load_model(str(tmp_path))
    assert loaded.config.pos_encoding == pos_encoding
    assert torch.equal(loaded(x)[0], model.eval()(x)[0])


@pytest.mark.parametrize("causal", [True, False])
def test_mask_decides_whether_later_tokens_reach_earlier_outputs(causal):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, n_layer=2, n_head=2, n_embd=32, block_size=16, causal=causal)).eval()
    idx = torch.randint(0, 65, (1, 16))
    changed = idx.clone()
    changed[0, -1] = (idx[0, -1] + 1) % 65
    a, b = model(idx)[0], model(changed)[0]
    earlier_changed = not torch.allclose(a[:, :-1], b[:, :-1])
    assert earlier_changed is (not causal)


def test_encoder_model_has_no_cache():
    model = GPT(GPTConfig(vocab_size=65, n_layer=1, n_head=2, n_embd=16, block_size=8, causal=False))
    assert model.new_cache(1) is None


def test_bigram_trains_and_samples():
    torch.manual_seed(0)
    model = build_model(GPTConfig(vocab_size=8, block_size=4, arch="bigram"))
    opt = model.configure_optimizer(0.1, 0.0, (0.9, 0.99))
    seq = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 0]])
    for _ in range(100):
        loss = model(seq[:, :-1], seq[:, 1:])[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = model.eval().generate(torch.tensor([[3]]), 6, temperature=0)
    assert out.tolist() == [[3, 4, 5, 6, 7, 0, 1]]


def test_rotary_angles_are_float32_where_the_device_has_no_float64():
    assert angle_dtype(torch.device("mps")) == torch.float32
    assert angle_dtype(torch.device("cpu")) == angle_dtype(torch.device("cuda")) == torch.float64
    cos, sin = rotary_cos_sin(torch.arange(4), 8)
    assert cos.dtype == sin.dtype == torch.float32 and cos.shape == (4, 4)
