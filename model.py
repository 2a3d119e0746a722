"""The GPT language model: a decoder-only Transformer, in one readable file.

    from model import GPT, GPTConfig
    model = GPT(GPTConfig(vocab_size=65))
    logits, loss = model(idx, targets)

Importing or building a model has no side effects: no prints, no environment reads.
"""
import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from dropout import Dropout
from kv_cache import KVCache
from positions import apply_rotary, rotary_cos_sin, sinusoidal_table

POS_ENCODINGS = ("learned", "sinusoidal", "rope")


@dataclass
class GPTConfig:
    """Every hyperparameter of the model; a checkpoint stores `asdict(config)`."""
    block_size: int = 256  # context length: the most positions attention can see
    vocab_size: int = 65  # set from the dataset's tokenizer
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2 has
    pos_encoding: str = "learned"  # learned | sinusoidal | rope
    causal: bool = True  # False gives encoder blocks: every token sees every other
    attention: str = "auto"  # auto | sdpa (fused kernel) | explicit (the formula spelled out)
    activation: str = "gelu"  # gelu | gelu_tanh (GPT-2's approximation)
    arch: str = "gpt"  # gpt | bigram (the lookup-table baseline)

    def __post_init__(self):
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"pos_encoding must be one of {POS_ENCODINGS}, not {self.pos_encoding!r}")
        if self.attention not in ("auto", "sdpa", "explicit"):
            raise ValueError(f"attention must be 'auto', 'sdpa' or 'explicit', not {self.attention!r}")
        if self.activation not in ("gelu", "gelu_tanh"):
            raise ValueError(f"activation must be 'gelu' or 'gelu_tanh', not {self.activation!r}")
        if self.arch not in ("gpt", "bigram"):
            raise ValueError(f"arch must be 'gpt' or 'bigram', not {self.arch!r}")
        if self.arch == "gpt" and self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2 != 0:
            raise ValueError("rope needs an even head size (n_embd // n_head)")


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention; each position attends to itself and the positions before it."""

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.head_size = config.n_embd // config.n_head
        self.causal = config.causal
        self.window = config.block_size  # how far back a query may look
        self.attention = config.attention
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = Dropout(config.dropout)
        self.resid_dropout = Dropout(config.dropout)

    def forward(self, x, rope=None, cache=None, layer=0):
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, self.head_size)  # (B, T, 3, nh, hs)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hs): q, k, v, one head per row of nh
        q, k, v = qkv.unbind(0)  # each (B, nh, T, hs)
        if rope is not None:  # queries and keys turn together: half the ops of two calls
            q, k = apply_rotary(qkv[:2], *rope).unbind(0)
        mask, is_causal = None, self.causal
        if cache is not None:
            k, v, mask, is_causal = cache.update(layer, k, v)  # k, v: (B, nh, S, hs)
            q = q.to(k.dtype)  # the cache may be wider than the model (see GPT.new_cache)
        elif self.causal and T > self.window:  # only rope models get here: attend to the last `window` positions
            i = torch.arange(T, device=x.device)
            mask, is_causal = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - self.window), False
        y = self.attend(q, k, v, mask, is_causal)
        y = y.to(x.dtype).transpose(1, 2).contiguous().view(B, T, C)  # (B, T, nh*hs): heads side by side
        return self.resid_dropout(self.c_proj(y))

    def attend(self, q, k, v, mask, is_causal):
        """Each query's weighted mix of the values: q (B, nh, T, hs), k and v (B, nh, S, hs) -> (B, nh, T, hs)."""
        if self._use_explicit(q, k):
            return self._explicit_attention(q, k, v, mask, is_causal)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                              dropout_p=self.dropout if self.training else 0.0)

    def _use_explicit(self, q, k):
        """Whether to spell attention out rather than call the fused kernel.

        'auto' takes the fused kernel, except when training on a CPU with dropout, or
        in bf16 with up to 512 keys. PyTorch's fused CPU kernel has no dropout: with
        it, SDPA falls back to this same formula and draws its mask the slow way (one
        fp32 layer, 8 x 6 heads x 256 positions, forward and backward at dropout 0.2:
        111 ms there, 84 ms here). In bf16 the fused backward is the slow part: 35 ms
        against 28 ms at dropout 0, and at 12 x 4 x 64 x 32 6.4 ms against 1.7 ms. At
        1024 positions, or without a backward pass (generation), the fused kernel wins.
        """
        if self.attention != "auto":
            return self.attention == "explicit"
        if not torch.is_grad_enabled() or q.device.type != "cpu":
            return False
        return (self.training and self.dropout > 0) or (q.dtype == torch.bfloat16 and k.shape[2] <= 512)

    def _explicit_attention(self, q, k, v, mask, is_causal):
        """softmax(q k^T / sqrt(hs)) v, with future positions masked out: what SDPA computes."""
        B, nh, T, hs = q.shape
        S = k.shape[2]
        if is_causal:
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
        # The mask as a bias of 0 or -inf that the matmul adds as it scales, instead of a
        # division and a masked fill over the (T, S) scores each way (8 x 6 x 256 x 256,
        # bf16, forward and backward: 22 against 25 to 30 ms a layer).
        bias = torch.zeros(() if mask is None else mask.shape, dtype=q.dtype, device=q.device)
        if mask is not None:
            bias.masked_fill_(~mask, float("-inf"))
        att = torch.baddbmm(bias, q.reshape(B * nh, T, hs), k.reshape(B * nh, S, hs).transpose(1, 2),
                            beta=0 if mask is None else 1, alpha=1 / math.sqrt(hs)).view(B, nh, T, S)
        att = self.attn_dropout(F.softmax(att, dim=-1))
        return att @ v  # (B, nh, T, hs)


class MLP(nn.Module):
    """Position-wise feed-forward: widen 4x, GELU, project back."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """A Transformer block, pre-LayerNorm: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, rope=None, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), rope, cache, layer)  # tokens exchange information
        x = x + self.mlp(self.ln_2(x))  # each token thinks on what it gathered
        return x


class GPT(nn.Module):
    """Token and position embeddings, n_layer blocks, a final LayerNorm and a tied output head."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.pos_encoding == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        elif config.pos_encoding == "sinusoidal":
            self.register_buffer("pe", sinusoidal_table(config.block_size, config.n_embd), persistent=False)
        self.drop = Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017): the output head reads the input embedding table.
        self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2 scales the residual projections by 1/sqrt(2 * n_layer), two per block,
        # so the residual stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=True):
        """Parameters, by default without the position table (it does no multiply-adds)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.config.pos_encoding == "learned":
            n -= self.wpe.weight.numel()
        return n

    def crop_block_size(self, block_size):
        """Shorten the context to block_size positions, e.g. to fine-tune GPT-2 (1024) on shorter windows.

        Keeps the first block_size rows of the position table: the positions the
        shorter windows use, as they were trained.
        """
        if not 0 < block_size <= self.config.block_size:
            raise ValueError(f"block_size must be between 1 and {self.config.block_size}, not {block_size}")
        self.config = replace(self.config, block_size=block_size)  # a new config: the caller's is left alone
        if self.config.pos_encoding == "learned":
            self.wpe.weight = nn.Parameter(self.wpe.weight.detach()[:block_size].clone())
            self.wpe.num_embeddings = block_size
        elif self.config.pos_encoding == "sinusoidal":
            self.pe = self.pe[:block_size]
        for block in self.blocks:
            block.attn.window = block_size

    def forward(self, idx, targets=None, cache=None):
        """idx (B, T) token ids -> logits (B, T, vocab_size), and the mean loss if targets are given.

        Absolute positions stop at block_size. With rope, longer sequences work: each
        position attends to the block_size positions up to itself (sliding-window
        attention), which is exactly what a sliding KV cache computes.
        """
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if self.config.pos_encoding != "rope" and start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.wte(idx)  # (B, T, C)
        if self.config.pos_encoding == "learned":
            x = x + self.wpe(pos)
        elif self.config.pos_encoding == "sinusoidal":
            # The table's entries are of size 1 and embeddings start near 0.02: scaled as in
            # "Attention Is All You Need" (section 3.4), the tokens are not drowned out.
            # Unscaled, the CPU recipe reached val 2.67 at step 800; scaled 2.01 (learned: 1.97).
            x = x * math.sqrt(self.config.n_embd) + self.pe[pos]
        rope = rotary_cos_sin(pos, self.config.n_embd // self.config.n_head) \
            if self.config.pos_encoding == "rope" else None
        x = self.drop(x)
        if cache is not None:
            cache.prepare(T)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, i)
        if cache is not None:
            cache.commit(T)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def new_cache(self, batch_size, device=None, dtype=None):
        """An empty KVCache for this model, or None where a cache cannot serve (encoder blocks)."""
        if not self.config.causal:
            return None
        c = self.config
        p = self.wte.weight
        device = device or p.device
        if dtype is None:
            # On CPU the cache is fp32 whatever the model's precision: one query's attention
            # over 256 keys (6 heads of 64) takes 118 us in bf16 and 19 us in fp32 on a
            # Zen 4, and fp32 holds bf16 keys and values exactly.
            dtype = torch.float32 if torch.device(device).type == "cpu" else p.dtype
        # Rotary caches slide in place; the extra room makes the slide's copy rare.
        capacity = 2 * c.block_size if c.pos_encoding == "rope" else c.block_size
        return KVCache(c.n_layer, batch_size, c.n_head, c.n_embd // c.n_head, c.block_size, capacity, device, dtype)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None):
        """Append max_new_tokens sampled tokens to idx (B, T); uses the KV cache."""
        from sampling import generate_tokens
        new = list(generate_tokens(self, idx, max_new_tokens, temperature=temperature, top_k=top_k,
                                   top_p=top_p, generator=generator))
        return torch.cat([idx] + new, dim=1)

    def configure_optimizer(self, learning_rate, weight_decay, betas, fused=False):
        """AdamW that decays matrices (weights of Linear and Embedding) and not biases or gains."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused or None)


class BigramLanguageModel(GPT):
    """The lecture's first model: each token looks up the logits of the next in a table.

    It shares GPT's interface (forward, generate, configure_optimizer) so the same
    scripts train and sample it; it sees one token of context, so it has no cache.
    """

    def __init__(self, config):
        nn.Module.__init__(self)
        self.config = config
        self.table = nn.Embedding(config.vocab_size, config.vocab_size)  # row i: logits after token i
        nn.init.normal_(self.table.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=True):
        return self.table.weight.numel()

    def forward(self, idx, targets=None, cache=None):
        logits = self.table(idx)  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def new_cache(self, batch_size, device=None, dtype=None):
        return None


class NoInit(TorchFunctionMode):
    """Within it, the random and constant fills that initialise new layers do nothing.

    For building a model whose every weight is about to be overwritten by loaded
    ones: GPT-2 (124M) took 1.49 s to build with its random init and 0.08 s
    without; the 10.7M-parameter model 0.108 s and 0.004 s.
    """
    FILLS = frozenset({"normal_", "uniform_", "kaiming_uniform_", "zeros_", "ones_", "zero_", "fill_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in self.FILLS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def build_model(config, state_dict=None):
    """The model class that `config.arch` names: freshly initialised, or holding state_dict's weights."""
    cls = BigramLanguageModel if config.arch == "bigram" else GPT
    if state_dict is None:
        return cls(config)
    with NoInit():
        model = cls(config)
    model.load_state_dict(state_dict)  # strict: every parameter and saved buffer is overwritten
    return model
