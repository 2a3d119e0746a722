"""One new token per sequence through a GPT and its KV cache: the step generation repeats.

GPT.forward serves every shape (training, prompts, re-encoding). For a single
new token its reshapes, module calls and dropout layers are bookkeeping around
25 one-row matrix products. A Decoder does the same arithmetic written flat:
the layers' own modules and weights, no dropout (in eval mode; a model in train
mode is handed to GPT.forward), no permutes (with one position, every head
split is a view), positions looked up directly. Outside the matrix products a
token of the 6-layer model took 0.76 ms here against GPT.forward's 1.19 ms
(bf16, 2-core Zen 4).

It also looks the layers up once, when it is made, rather than at every token:
reaching a layer or a weight through nn.Module's attribute lookup costs a
fraction of a microsecond, and a token made about 100 such lookups, besides
those inside the LayerNorm modules, whose arguments it keeps. A token took 1.41
against 1.49 ms (bf16, medians of 15 interleaved rounds). So make a Decoder
after the model's layers and weights are final, and a new one if either is
replaced (load_state_dict(..., assign=True) replaces the weights).

On a CPU the step runs with oneDNN switched off (see
packed_linear.onednn_disabled): its fixed cost per call is larger than a
one-token op. Its logits match GPT.forward's (tests hold them to 1e-5 in fp32).
"""
import math
from typing import Callable, NamedTuple

import torch
from torch.nn import functional as F

from packed_linear import onednn_disabled
from positions import apply_rotary, rotary_cos_sin


def _norm_args(ln):
    """F.layer_norm's arguments after its input, for an nn.LayerNorm."""
    return ln.normalized_shape, ln.weight, ln.bias, ln.eps


class BlockLayers(NamedTuple):
    """One block's layers as a one-token step calls them (forward methods, LayerNorm arguments).

    The layers are called through .forward: nn.Module.__call__'s hook handling
    costs a few microseconds a call, and a token makes about 50 calls (7% of a
    token here, fp32 or bf16). So hooks (pre- and post-forward) and compiled
    wrappers do not run in a decode step; GPT.forward, the prompt's pass, runs them.
    """
    ln_1: tuple
    c_attn: Callable
    attend: Callable
    c_proj: Callable
    ln_2: tuple
    c_fc: Callable
    gelu: Callable
    mlp_proj: Callable

    @classmethod
    def of(cls, block):
        attn, mlp = block.attn, block.mlp
        return cls(_norm_args(block.ln_1), attn.c_attn.forward, attn.attend, attn.c_proj.forward,
                   _norm_args(block.ln_2), mlp.c_fc.forward, mlp.gelu.forward, mlp.c_proj.forward)


class Decoder:
    """Logits for the next position of every row, one token at a time: decoder(tokens, cache)."""

    def __init__(self, model):
        self.model = model
        c = model.config
        self.n_head, self.head_size = c.n_head, c.n_embd // c.n_head
        self.blocks = [BlockLayers.of(block) for block in model.blocks]
        self.ln_f, self.lm_head = _norm_args(model.ln_f), model.lm_head.forward

    @torch.inference_mode()
    def __call__(self, tokens, cache):
        """Logits (B, vocab_size) for tokens (B, 1); the cache advances by one."""
        if self.model.training:  # dropout applies: GPT.forward has every dropout layer
            return self.model(tokens, cache=cache)[0][:, -1]
        if tokens.device.type != "cpu":
            return self._step(tokens, cache)
        with onednn_disabled():  # oneDNN's fixed cost per call outweighs one token's work in every op here
            return self._step(tokens, cache)

    def _step(self, tokens, cache):
        model, c = self.model, self.model.config
        B, C, nh, hs = tokens.size(0), c.n_embd, self.n_head, self.head_size
        pos = cache.pos
        if c.pos_encoding != "rope" and pos >= c.block_size:
            raise ValueError(f"sequence of {pos + 1} tokens is longer than block_size {c.block_size}")
        x = model.wte.forward(tokens)  # (B, 1, C)
        rope = None
        if c.pos_encoding == "learned":
            x = x + model.wpe.weight[pos]
        elif c.pos_encoding == "sinusoidal":
            x = x * math.sqrt(C) + model.pe[pos]  # scaled as in GPT.forward
        else:
            rope = rotary_cos_sin(torch.tensor([pos], device=x.device), hs)
        cache.prepare(1)
        for layer, (ln_1, c_attn, attend, c_proj, ln_2, c_fc, gelu, mlp_proj) in enumerate(self.blocks):
            qkv = c_attn(F.layer_norm(x, *ln_1)).view(B, 3, nh, 1, hs)  # one position: split by views
            q, k, v = qkv.unbind(1)  # each (B, nh, 1, hs)
            if rope is not None:
                q, k = apply_rotary(qkv[:, :2], *rope).unbind(1)
            k, v, _, _ = cache.update(layer, k, v)  # (B, nh, S, hs): every kept key is visible to the new query
            y = attend(q.to(k.dtype), k, v, None, False)  # (B, nh, 1, hs)
            x = x + c_proj(y.to(x.dtype).reshape(B, 1, C))  # a copy only where a kernel returned padded heads
            x = x + mlp_proj(gelu(c_fc(F.layer_norm(x, *ln_2))))
        cache.commit(1)
        return self.lm_head(F.layer_norm(x, *self.ln_f)).view(B, -1)


def decode_step(model, tokens, cache):
    """Logits (B, vocab_size) for tokens (B, 1), the next position of every row; the cache advances by one.

    For one step; a loop makes one Decoder and calls it at every token.
    """
    return Decoder(model)(tokens, cache)
