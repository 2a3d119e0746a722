"""One new token per sequence through a GPT and its KV cache: the step generation repeats.

GPT.forward serves every shape (training, prompts, re-encoding). For a single
new token its reshapes, module calls and dropout layers are bookkeeping around
25 one-row matrix products. decode_step does the same arithmetic written flat:
the layers' own modules and weights, no dropout (in eval mode; a model in train
mode is handed to GPT.forward), no permutes (with one position,
every head split is a view), positions looked up directly. Outside the matrix
products a token of the 6-layer model took 0.76 ms here against GPT.forward's
1.19 ms (bf16, 2-core Zen 4). On a CPU the step runs with oneDNN switched off
(see packed_linear.onednn_disabled): its fixed cost per call is larger than a
one-token op. Its logits match GPT.forward's (tests hold them to 1e-5 in fp32).
"""
import math

import torch

from packed_linear import onednn_disabled
from positions import apply_rotary, rotary_cos_sin


@torch.inference_mode()
def decode_step(model, tokens, cache):
    """Logits (B, vocab_size) for tokens (B, 1), the next position of every row; the cache advances by one."""
    if model.training:  # dropout applies: GPT.forward has every dropout layer
        return model(tokens, cache=cache)[0][:, -1]
    if tokens.device.type != "cpu":
        return _flat_step(model, tokens, cache)
    with onednn_disabled():  # oneDNN's fixed cost per call outweighs one token's work in every op here
        return _flat_step(model, tokens, cache)


def _flat_step(model, tokens, cache):
    c = model.config
    B, C, nh = tokens.size(0), c.n_embd, c.n_head
    hs = C // nh
    pos = cache.pos
    if c.pos_encoding != "rope" and pos >= c.block_size:
        raise ValueError(f"sequence of {pos + 1} tokens is longer than block_size {c.block_size}")
    # Layers are called through .forward: nn.Module.__call__'s hook handling costs a few
    # microseconds a call, and a token makes about 50 calls (7% of a token here, fp32 or
    # bf16). So hooks (pre- and post-forward) and compiled wrappers do not run here;
    # GPT.forward, the prompt's pass, runs them.
    x = model.wte.forward(tokens)  # (B, 1, C)
    rope = None
    if c.pos_encoding == "learned":
        x = x + model.wpe.weight[pos]
    elif c.pos_encoding == "sinusoidal":
        x = x * math.sqrt(C) + model.pe[pos]  # scaled as in GPT.forward
    else:
        rope = rotary_cos_sin(torch.tensor([pos], device=x.device), hs)
    cache.prepare(1)
    for layer, block in enumerate(model.blocks):
        attn, mlp = block.attn, block.mlp
        qkv = attn.c_attn.forward(block.ln_1.forward(x)).view(B, 3, nh, 1, hs)  # one position: split by views
        q, k, v = qkv.unbind(1)  # each (B, nh, 1, hs)
        if rope is not None:
            q, k = apply_rotary(qkv[:, :2], *rope).unbind(1)
        k, v, _, _ = cache.update(layer, k, v)  # (B, nh, S, hs): every kept key is visible to the new query
        y = attn.attend(q.to(k.dtype), k, v, None, False)  # (B, nh, 1, hs)
        x = x + attn.c_proj.forward(y.to(x.dtype).reshape(B, 1, C))  # a copy only where a kernel returned padded heads
        x = x + mlp.c_proj.forward(mlp.gelu.forward(mlp.c_fc.forward(block.ln_2.forward(x))))
    cache.commit(1)
    return model.lm_head.forward(model.ln_f.forward(x)).view(B, -1)
