import math

import pytest
import torch
from torch.nn import functional as F

import model as model_module
from model import GPT, GPTConfig, build_model, cross_entropy


def tiny(**kw):
    return GPTConfig(**dict(dict(vocab_size=65, n_layer=2, n_head=4, n_embd=32, block_size=16), **kw))


def test_shapes_and_loss():
    model = GPT(tiny())
    idx = torch.randint(0, 65, (3, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, 65)
    assert loss.shape == ()
    logits, loss = model(idx[:, :5])
    assert logits.shape == (3, 5, 65) and loss is None


def test_sequence_longer_than_block_size_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        GPT(tiny())(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "rope"])
def test_changing_later_tokens_never_changes_earlier_logits(pos_encoding):
    torch.manual_seed(0)
    model = GPT(tiny(pos_encoding=pos_encoding)).eval()
    idx = torch.randint(0, 65, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = torch.randint(0, 65, (2, 6))
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_loss_at_init_is_near_uniform():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx = torch.randint(0, 65, (8, 16))
    _, loss = model(idx, torch.randint(0, 65, (8, 16)))
    assert abs(loss.item() - math.log(65)) < 0.1


def test_sdpa_and_explicit_attention_agree():
    torch.manual_seed(0)
    fused = GPT(tiny()).eval()
    explicit = GPT(tiny(attention="explicit")).eval()
    explicit.load_state_dict(fused.state_dict())
    idx = torch.randint(0, 65, (2, 16))
    a, _ = fused(idx)
    b, _ = explicit(idx)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_one_batch_overfits():
    torch.manual_seed(0)
    model = GPT(tiny())
    opt = model.configure_optimizer(3e-3, 0.0, (0.9, 0.99))
    idx = torch.randint(0, 65, (4, 16))
    x, y = idx[:, :-1], idx[:, 1:]
    for _ in range(200):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_same_seed_same_losses():
    def losses():
        torch.manual_seed(42)
        model = GPT(tiny(dropout=0.1))
        opt = model.configure_optimizer(1e-3, 0.1, (0.9, 0.99))
        out = []
        for _ in range(5):
            idx = torch.randint(0, 65, (4, 16))
            _, loss = model(idx, idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
        return out
    assert losses() == losses()


def test_weight_tying_and_init():
    model = GPT(tiny())
    assert model.lm_head.weight is model.wte.weight
    proj = model.blocks[0].attn.c_proj.weight
    assert abs(proj.std().item() - 0.02 / math.sqrt(4)) < 0.004


def test_weight_decay_only_on_matrices():
    opt = GPT(tiny()).configure_optimizer(1e-3, 0.1, (0.9, 0.95))
    decayed, plain = opt.param_groups
    assert all(p.dim() >= 2 for p in decayed["params"]) and decayed["weight_decay"] == 0.1
    assert all(p.dim() < 2 for p in plain["params"]) and plain["weight_decay"] == 0.0


def test_bigram_is_a_lookup_table():
    model = build_model(tiny(arch="bigram"))
    idx = torch.tensor([[3, 3, 5]])
    logits, _ = model(idx)
    assert torch.equal(logits[0, 0], logits[0, 1])
    assert model.num_params() == 65 * 65


def test_auto_attention_spells_out_bf16_training_on_cpu_only():
    attn = GPT(tiny()).blocks[0].attn
    q = torch.zeros(1, 4, 16, 8)
    assert not attn.spelled_out(q, q)  # fp32: the fused kernel
    assert attn.spelled_out(q.bfloat16(), q.bfloat16())  # bf16 training on CPU: the formula
    with torch.no_grad():
        assert not attn.spelled_out(q.bfloat16(), q.bfloat16())  # generation: the fused kernel
    long = torch.zeros(1, 4, 1024, 8, dtype=torch.bfloat16)
    assert not attn.spelled_out(long, long)


def test_explicit_attention_takes_the_caches_masks_as_sdpa_does():
    # A cache hands attention a (T, S) mask: T new queries, S cached keys, a sliding window
    # for rotary models. The formula adds it as a bias over every batch row and head.
    torch.manual_seed(0)
    attn = GPT(tiny()).blocks[0].attn
    q = torch.randn(2, 4, 5, 8, requires_grad=True)
    k, v = torch.randn(2, 2, 4, 9, 8).unbind(0)
    q_idx, k_idx = torch.arange(4, 9)[:, None], torch.arange(9)[None, :]
    mask = (k_idx <= q_idx) & (k_idx > q_idx - 6)  # (5, 9)
    spelled_out = attn.explicit_attention(q, k, v, mask, False)
    fused = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(spelled_out, fused, atol=1e-6)
    grad_spelled, = torch.autograd.grad(spelled_out.sum(), q)
    grad_fused, = torch.autograd.grad(fused.sum(), q)
    assert torch.allclose(grad_spelled, grad_fused, atol=1e-6)


def test_spelled_out_attention_applies_dropout_in_training_only():
    torch.manual_seed(0)
    attn = GPT(tiny(dropout=0.5, attention="explicit")).blocks[0].attn
    q = torch.randn(1, 4, 16, 8)
    evaluated = attn.eval().explicit_attention(q, q, q, None, True)
    assert torch.equal(attn.explicit_attention(q, q, q, None, True), evaluated)
    assert not torch.allclose(attn.train().explicit_attention(q, q, q, None, True), evaluated)


def test_auto_attention_under_bf16_autocast_matches_fp32():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx = torch.randint(0, 65, (2, 16))
    _, fp32 = model(idx, idx)
    with torch.autocast("cpu", torch.bfloat16):
        _, bf16 = model(idx, idx)
    bf16.backward()
    assert abs(bf16.item() - fp32.item()) < 0.02
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("kw", [dict(pos_encoding="learned"), dict(pos_encoding="sinusoidal"),
                                dict(pos_encoding="rope", bias=False), dict(arch="bigram")])
def test_built_from_weights_computes_what_the_original_does(kw):
    torch.manual_seed(0)
    original = build_model(tiny(**kw)).eval()
    loaded = build_model(tiny(**kw), original.state_dict()).eval()  # no random init, then the weights
    idx = torch.randint(0, 65, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], original(idx)[0])  # also the sinusoidal table, which is not saved
    if kw.get("arch") != "bigram":
        assert loaded.lm_head.weight is loaded.wte.weight  # still one tied matrix


def test_built_from_weights_refuses_a_state_dict_that_does_not_fill_it():
    weights = GPT(tiny()).state_dict()
    del weights["ln_f.weight"]
    with pytest.raises(RuntimeError, match="ln_f.weight"):
        build_model(tiny(), weights)


def test_under_autocast_attention_hands_its_projection_bf16_not_an_fp32_copy():
    model = GPT(tiny())
    seen = []
    model.blocks[0].attn.c_proj.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    with torch.autocast("cpu", torch.bfloat16):
        model(torch.zeros(1, 16, dtype=torch.long))
    assert seen == [torch.bfloat16]


def test_vocabulary_rows_are_padded_to_64_and_never_seen():
    model = GPT(tiny(vocab_size=65))
    assert model.wte.weight.shape == (128, 32) and model.lm_head.weight is model.wte.weight
    logits, loss = model(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
    assert logits.shape == (2, 4, 65)  # the padded rows' logits are cut off
    assert GPTConfig(vocab_size=50257).padded_vocab_size == 50304 and GPTConfig(vocab_size=64).padded_vocab_size == 64


def test_the_loss_in_chunks_is_the_loss_and_its_gradient(monkeypatch):
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 65, requires_grad=True)
    targets = torch.randint(0, 65, (3, 7))
    targets[0, 0] = -1  # skipped
    expected = F.cross_entropy(logits.view(-1, 65), targets.view(-1), ignore_index=-1)
    grad, = torch.autograd.grad(expected, logits)
    calls = []
    real = F.cross_entropy
    monkeypatch.setattr(model_module.F, "cross_entropy", lambda x, *a, **k: calls.append(x.shape) or real(x, *a, **k))
    monkeypatch.setattr(model_module, "LOSS_CHUNK_ELEMENTS", 65 * 5)  # five rows of logits at a time
    loss = cross_entropy(logits, targets)
    assert calls == [(5, 65)] * 4 + [(1, 65)]  # never all 21 rows in fp32 at once
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(torch.autograd.grad(loss, logits)[0], grad, atol=1e-7)
