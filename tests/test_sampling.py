"""The token loop in model.py: the KV cache gives exactly what recomputation gives; the sampling controls."""
import torch
import pytest

import model as model_module
from common import UserError
from model import GPT, GPTConfig
from model import check_finite, filter_top_k, filter_top_p, generate_tokens, sample_next


def tiny_model(pos_encoding="learned", seed=0):
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=65, n_layer=2, n_head=2, n_embd=32, block_size=16, pos_encoding=pos_encoding)
    return GPT(config).eval()


def generate(model, prompt, n, use_cache, **kw):
    return torch.cat(list(generate_tokens(model, prompt, n, use_cache=use_cache, **kw)), dim=1)


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "rope"])
def test_greedy_with_and_without_cache_identical_past_context(pos_encoding):
    model = tiny_model(pos_encoding)
    prompt = torch.randint(0, 65, (2, 5))
    n = 60  # well past block_size 16: the window slides several times
    assert torch.equal(generate(model, prompt, n, True, temperature=0), generate(model, prompt, n, False, temperature=0))


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "rope"])
def test_seeded_sampling_with_and_without_cache_identical(pos_encoding):
    model = tiny_model(pos_encoding)
    prompt = torch.randint(0, 65, (3, 4))
    kw = dict(temperature=1.0, top_k=20, top_p=0.95)
    a = generate(model, prompt, 50, True, generator=torch.Generator().manual_seed(7), **kw)
    b = generate(model, prompt, 50, False, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(a, b)
    c = generate(model, prompt, 50, True, generator=torch.Generator().manual_seed(8), **kw)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "rope"])
def test_cached_logits_match_uncached(pos_encoding):
    model = tiny_model(pos_encoding)
    idx = torch.randint(0, 65, (2, 16))
    full, _ = model(idx)
    cache = model.new_cache(2)
    steps = [model(idx[:, :6], cache=cache)[0]]  # a prefill of 6, then one token at a time
    for t in range(6, 16):
        steps.append(model(idx[:, t:t + 1], cache=cache)[0])
    cached = torch.cat(steps, dim=1)
    assert (cached - full).abs().max().item() < 1e-5


def test_rope_cache_slides_past_context_without_reencoding():
    model = tiny_model("rope")
    block = model.config.block_size
    idx = torch.randint(0, 65, (1, 3 * block))
    cache = model.new_cache(1)
    logits, _ = model(idx[:, :1], cache=cache)
    for t in range(1, 3 * block):
        logits, _ = model(idx[:, t:t + 1], cache=cache)  # always one token: no re-encoding
    full, _ = model(idx)  # the whole sequence at once, under the sliding-window mask
    assert (logits[:, -1] - full[:, -1]).abs().max().item() < 1e-5


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept = torch.isfinite(filter_top_p(logits, 0.8))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 + 0.3 reaches 0.8
    kept = torch.isfinite(filter_top_p(logits, 0.81))
    assert kept.tolist() == [[True, True, True, False]]
    kept = torch.isfinite(filter_top_p(logits[:, [2, 0, 3, 1]], 0.5))  # order in the vocabulary does not matter
    assert kept.tolist() == [[False, True, False, False]]


def test_top_p_never_drops_the_top_token():
    logits = torch.tensor([[5.0, 1.0, 0.0], [0.0, 0.0, 9.0]])
    kept = torch.isfinite(filter_top_p(logits, 1e-6))
    assert kept.tolist() == [[True, False, False], [False, False, True]]


def test_top_k():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    assert torch.isfinite(filter_top_k(logits, 2)).tolist() == [[False, True, True, False]]


@pytest.mark.parametrize("logits", [[[5.0, float("nan"), 1.0]], [[float("inf"), 0.0, 1.0]],
                                    [[float("-inf")] * 3], [[5.0, -3.0, 2.0]]])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_logits_that_are_not_finite_give_no_token_but_an_error(logits, temperature):
    if logits == [[5.0, -3.0, 2.0]]:
        temperature = 1e-40  # finite logits, but logits / temperature overflows
    rows = torch.tensor(logits + [[0.0, 0.0, -1.0]])  # a good row beside the bad one
    tokens = sample_next(rows, temperature)
    assert tokens[0].item() == -1 and 0 <= tokens[1].item() < 3  # marked, without waiting on the device
    with pytest.raises(FloatingPointError, match="not finite"):
        check_finite(tokens)


def test_a_generator_stops_with_one_line_when_the_logits_are_not_finite():
    model = tiny_model()
    with torch.no_grad():
        model.ln_f.weight.fill_(float("nan"))
    from generate import Generator
    from tokenizer import CharTokenizer
    gen = Generator(model, CharTokenizer([chr(97 + i) for i in range(65)]), torch.device("cpu"))
    with pytest.raises(UserError, match="not finite"):
        gen("a", max_new_tokens=5)
    with pytest.raises(FloatingPointError, match="not finite"):
        model.generate(torch.zeros(1, 1, dtype=torch.long), 5)


def test_sampling_follows_the_probabilities_and_never_picks_a_dropped_token():
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0]]).expand(20000, -1)
    tokens = sample_next(probs.log(), 1.0, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(tokens.view(-1), minlength=5)
    assert counts[1] == 0 and counts[4] == 0
    assert (counts / 20000 - probs[0]).abs().max() < 0.02


def test_top_k_at_or_above_the_vocabulary_filters_nothing(monkeypatch):
    torch.manual_seed(0)
    logits = torch.randn(3, 65)
    draws = [sample_next(logits, 1.0, k, generator=torch.Generator().manual_seed(0)) for k in (None, 65, 200)]
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])  # the draws of no top_k
    def refuse(*args):
        raise AssertionError("filter_top_k called with k >= vocabulary")
    monkeypatch.setattr(model_module, "filter_top_k", refuse)
    sample_next(logits, 1.0, 65)  # the filter is skipped, not run for nothing
    with pytest.raises(AssertionError):
        sample_next(logits, 1.0, 64)


def test_temperature_zero_is_greedy_and_deterministic():
    logits = torch.randn(4, 65)
    assert torch.equal(sample_next(logits, temperature=0), logits.argmax(-1, keepdim=True))
    model = tiny_model()
    prompt = torch.randint(0, 65, (1, 3))
    assert torch.equal(generate(model, prompt, 30, True, temperature=0), generate(model, prompt, 30, True, temperature=0))


def test_num_samples_are_one_batch_and_differ():
    model = tiny_model()
    out = generate(model, torch.zeros(4, 1, dtype=torch.long), 30, True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 30)
    assert len({tuple(row.tolist()) for row in out}) > 1


def test_model_generate_appends_tokens():
    model = tiny_model()
    idx = torch.zeros(2, 3, dtype=torch.long)
    out = model.generate(idx, 40, temperature=0)
    assert out.shape == (2, 43) and torch.equal(out[:, :3], idx)


def test_rope_prompt_longer_than_context():
    model = tiny_model("rope")
    prompt = torch.randint(0, 65, (1, 40))  # 2.5 windows: prefilled in chunks
    assert torch.equal(generate(model, prompt, 20, True, temperature=0), generate(model, prompt, 20, False, temperature=0))


def test_generation_scores_the_prompts_last_position_only():
    model = GPT(GPTConfig(vocab_size=64, n_layer=1, n_head=2, n_embd=16, block_size=32)).eval()
    rows = []
    model.lm_head.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[1]))
    list(generate_tokens(model, torch.zeros(2, 20, dtype=torch.long), 3))
    assert rows == [1, 1, 1]  # the 20-token prompt, then two steps (the third token needs no logits)
