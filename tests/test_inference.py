"""The model as generation prepares it: laid-out weights on CPU, an fp32 cache under bf16 weights, one-token steps."""
import pytest
import threading

import torch

from generate import for_inference
from model import GPT, GPTConfig
from decode import decode_step
import packed_linear
from packed_linear import PackedLinear, SplitLinear, can_pack
from sampling import generate_tokens

needs_packing = pytest.mark.skipif(not can_pack("cpu", torch.bfloat16), reason="this PyTorch has no oneDNN prepacked linear")


def tiny_model(bias=True, pos_encoding="learned", activation="gelu", vocab_size=65):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=16, bias=bias,
                       pos_encoding=pos_encoding, activation=activation)
    return GPT(config).eval()


def prepared(model, dtype):
    copy = GPT(model.config)
    copy.load_state_dict(model.state_dict())
    return for_inference(copy, dtype)


@needs_packing
@pytest.mark.parametrize("bias", [True, False])
def test_packed_model_computes_what_the_plain_one_does(bias):
    model = tiny_model(bias)
    split = prepared(model, torch.float32)
    assert sum(isinstance(m, SplitLinear) for m in split.modules()) == 2 * 4  # 4 per block; the 65-wide head stays
    packed = prepared(model, torch.bfloat16)
    assert sum(isinstance(m, PackedLinear) for m in packed.modules()) == 2 * 4 + 1
    assert all(block.mlp.c_fc.gelu == "none" and isinstance(block.mlp.gelu, torch.nn.Identity)
               for block in packed.blocks)
    idx = torch.randint(0, 65, (3, 16))  # 48 rows: more than SplitLinear.FEW_ROWS
    with torch.no_grad():
        full = model(idx)[0]
        assert (split(idx)[0] - full).abs().max().item() < 1e-5
        plain_bf16 = GPT(model.config)
        plain_bf16.load_state_dict(model.state_dict())
        plain_bf16 = plain_bf16.to(torch.bfloat16).eval()
        # bf16 rounding moves the logits (up to 0.57 here) by about 0.002 either way; the
        # packed model rounds once fewer per MLP, so it is as close to fp32 as the plain one.
        packed_err = (packed(idx)[0].float() - full).abs().max().item()
        plain_err = (plain_bf16(idx)[0].float() - full).abs().max().item()
        assert packed_err < 0.01 and packed_err <= plain_err * 1.2


@needs_packing
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_packed_products_are_nn_linear_and_gelu_rounded_once(approximate):
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 128).to(torch.bfloat16)
    x = torch.randn(5, 32, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(PackedLinear(linear)(x), linear(x))
        fused = PackedLinear(linear, gelu=approximate)(x).float()
        sums = torch.nn.functional.linear(x.float(), linear.weight.float(), linear.bias.float())
        rounded_once = torch.nn.functional.gelu(sums, approximate=approximate).to(torch.bfloat16).float()
    assert torch.allclose(fused, rounded_once, rtol=2 ** -7, atol=1e-6)  # within one bf16 step


@needs_packing
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("approximate", [None, "none", "tanh"])
def test_packed_one_row_runs_with_onednn_off_and_switches_it_back(approximate, bias, monkeypatch):
    torch.manual_seed(0)
    linear = torch.nn.Linear(384, 128, bias=bias).to(torch.bfloat16)
    x = torch.randn(1, 1, 384, dtype=torch.bfloat16)
    packed = PackedLinear(linear, gelu=approximate)
    seen = []
    def recording(name, op):
        def call(*args, **kwargs):
            seen.append((name, torch._C._get_mkldnn_enabled()))
            return op(*args, **kwargs)
        return call
    for name in ("mv", "addmv"):
        monkeypatch.setattr(packed_linear.torch, name, recording(name, getattr(torch, name)))
    monkeypatch.setattr(packed_linear.F, "gelu", recording("gelu", torch.nn.functional.gelu))
    was = torch._C._get_mkldnn_enabled()
    outputs = []
    try:
        with torch.no_grad():
            for onednn in (True, False):  # whatever the caller had set is left set
                torch._C._set_mkldnn_enabled(onednn)
                outputs.append(packed(x))
                assert torch._C._get_mkldnn_enabled() is onednn
    finally:
        torch._C._set_mkldnn_enabled(was)
    # the product, and GELU where there is one, ran with oneDNN off both times
    product = "addmv" if bias else "mv"
    assert seen == 2 * ([(product, False)] + ([] if approximate is None else [("gelu", False)]))
    assert torch.equal(outputs[0], outputs[1]) and outputs[0].shape == (1, 1, 128)
    bias = None if linear.bias is None else linear.bias.float()
    sums = torch.nn.functional.linear(x.float(), linear.weight.float(), bias)
    if approximate is not None:
        sums = torch.nn.functional.gelu(sums.to(torch.bfloat16).float(), approximate=approximate)  # of the rounded sums
    assert torch.allclose(outputs[0].float(), sums, rtol=2 ** -7, atol=1e-6)  # within one bf16 step


@needs_packing
def test_one_row_calls_from_threads_leave_onednn_on():
    linear = PackedLinear(torch.nn.Linear(16, 16).to(torch.bfloat16))
    x = torch.randn(1, 16, dtype=torch.bfloat16)
    def work():
        with torch.no_grad():
            for _ in range(5000):
                linear(x)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch._C._get_mkldnn_enabled()


@needs_packing
@pytest.mark.parametrize("rows", [(1,), (3, 1), (32,), (33,), (4, 9)])
def test_split_products_equal_nn_linear_for_any_number_of_rows(rows):
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 64)
    x = torch.randn(*rows, 48)
    with torch.no_grad():
        assert (SplitLinear(linear)(x) - linear(x)).abs().max().item() < 1e-5


@needs_packing
@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_packed_model_with_and_without_cache_identical(pos_encoding):
    packed = prepared(tiny_model(pos_encoding=pos_encoding), torch.float32)
    prompt = torch.randint(0, 65, (2, 5))
    runs = [torch.cat(list(generate_tokens(packed, prompt, 40, temperature=0, use_cache=c)), dim=1) for c in (True, False)]
    assert torch.equal(*runs)


@needs_packing
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prepared_state_dict_loads_into_a_plain_model(dtype):
    model = tiny_model().to(dtype)
    fresh = GPT(model.config).to(dtype).eval()
    fresh.load_state_dict(prepared(model, dtype).state_dict())
    idx = torch.randint(0, 65, (1, 10))
    with torch.no_grad():
        assert torch.equal(fresh(idx)[0], model(idx)[0])


@needs_packing
def test_fp16_models_are_left_unpacked():
    model = prepared(tiny_model(), torch.float16)
    assert not any(isinstance(m, (PackedLinear, SplitLinear)) for m in model.modules())


@needs_packing
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_laid_out_weights_refuse_training(dtype):
    prepared_model = prepared(tiny_model(), dtype)
    x = torch.randn(1, 32, dtype=dtype, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference"):
        prepared_model.blocks[0].attn.c_attn(x)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("pos_encoding,activation", [("learned", "gelu"), ("sinusoidal", "gelu_tanh"),
                                                     ("rope", "gelu")])
def test_decode_step_gives_the_logits_of_the_full_forward(bias, pos_encoding, activation):
    model = tiny_model(bias, pos_encoding, activation)  # block_size 16
    n = 40 if pos_encoding == "rope" else 16  # rotary windows slide past the context; absolute ones stop at it
    idx = torch.randint(0, 65, (2, n))
    cache = model.new_cache(2)
    with torch.no_grad():
        full = model(idx)[0]  # with rope, a sliding window of 16 positions, as the cache keeps
        first = model(idx[:, :3], cache=cache)[0]
    steps = [decode_step(model, idx[:, t:t + 1], cache) for t in range(3, n)]
    assert cache.pos == n
    assert (torch.stack(steps, dim=1) - full[:, 3:]).abs().max().item() < 1e-5
    assert (first - full[:, :3]).abs().max().item() < 1e-5


@needs_packing
@pytest.mark.parametrize("batch", [1, 3])  # one row a product (the default sample), and several
@pytest.mark.parametrize("dtype,vocab_size", [(torch.bfloat16, 65), (torch.float32, 64)])
def test_decode_step_on_a_prepared_model_gives_what_its_forward_gives(dtype, vocab_size, batch):
    # bf16: packed weights and an fp32 cache, the default on this CPU; fp32 with an even
    # vocabulary: the tied output head is split too.
    model = prepared(tiny_model(pos_encoding="rope", vocab_size=vocab_size), dtype)
    idx = torch.randint(0, vocab_size, (batch, 30))  # past block_size: the cache slides
    caches = model.new_cache(batch), model.new_cache(batch)
    with torch.no_grad():
        model(idx[:, :2], cache=caches[0])
        model(idx[:, :2], cache=caches[1])
        forward = torch.cat([model(idx[:, t:t + 1], cache=caches[0])[0] for t in range(2, 30)], dim=1)
    steps = torch.stack([decode_step(model, idx[:, t:t + 1], caches[1]) for t in range(2, 30)], dim=1)
    if dtype == torch.bfloat16 or batch > 1:
        assert torch.equal(steps, forward)
    else:  # one fp32 row: decode_step runs GELU in PyTorch's kernel, forward in oneDNN's
        assert (steps - forward).abs().max().item() < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_step_runs_with_onednn_off_and_switches_it_back(dtype, monkeypatch):
    model = prepared(tiny_model(), dtype)
    seen, layer_norm = [], torch.nn.functional.layer_norm
    def recording_layer_norm(*args, **kwargs):
        seen.append(torch._C._get_mkldnn_enabled())
        return layer_norm(*args, **kwargs)
    monkeypatch.setattr(torch.nn.functional, "layer_norm", recording_layer_norm)
    cache = model.new_cache(1)
    with torch.no_grad():
        model(torch.zeros(1, 2, dtype=torch.long), cache=cache)
    assert all(seen) and len(seen) == 2 * 2 + 1  # the prompt's pass keeps oneDNN
    seen.clear()
    for _ in range(2):  # the second step would see a switch left behind by the first
        decode_step(model, torch.zeros(1, 1, dtype=torch.long), cache)
    assert seen == [False] * 2 * (2 * 2 + 1)  # two per block, and the final one
    assert torch._C._get_mkldnn_enabled() and not packed_linear._this_thread.onednn_off


def test_decode_step_in_train_mode_applies_dropout_as_forward_does():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=0.5)).train()
    idx = torch.randint(0, 65, (1, 4))
    cache = model.new_cache(1)
    with torch.no_grad():
        model(idx[:, :3], cache=cache)
    torch.manual_seed(1)
    step = decode_step(model, idx[:, 3:], cache)
    cache.pos -= 1  # the same position again
    cache.length -= 1
    torch.manual_seed(1)
    with torch.no_grad():
        forward = model(idx[:, 3:], cache=cache)[0][:, -1]
    assert torch.equal(step, forward)


def test_decode_step_refuses_positions_past_absolute_ones():
    model = tiny_model()
    cache = model.new_cache(1)
    with torch.no_grad():
        model(torch.zeros(1, 16, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="block_size"):
        decode_step(model, torch.zeros(1, 1, dtype=torch.long), cache)
    # the error left oneDNN's switch as it found it, and free for other threads
    assert torch._C._get_mkldnn_enabled() and not packed_linear._this_thread.onednn_off
    assert not packed_linear._onednn_switch.locked()


def test_cpu_cache_is_fp32_under_bf16_weights_and_agrees_with_recomputing():
    model = prepared(tiny_model(), torch.bfloat16)
    cache = model.new_cache(1)
    assert cache.k.dtype == torch.float32
    idx = torch.randint(0, 65, (1, 12))
    with torch.no_grad():
        full, _ = model(idx)
        steps = [model(idx[:, :4], cache=cache)[0]] + [model(idx[:, t:t + 1], cache=cache)[0] for t in range(4, 12)]
    cached = torch.cat(steps, dim=1)
    assert cached.dtype == torch.bfloat16
    # The logits reach 0.5. The two paths round differently in bf16, by about 0.004 here;
    # feeding the cached path its tokens in the wrong order moves them by 0.6.
    assert (cached.float() - full.float()).abs().max().item() < 0.01
