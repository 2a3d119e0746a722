"""The GPT language model: a decoder-only Transformer, in one readable file.

    from model import GPT, GPTConfig
    model = GPT(GPTConfig(vocab_size=65))
    logits, loss = model(idx, targets)

Reading order: GPTConfig; the position encodings; the KV cache that generation
fills; CausalSelfAttention, MLP, Block, GPT; the loss; generation, from logits to
tokens; the bigram baseline. The file imports nothing else of the project, and
importing or building a model has no side effects: no prints, no environment reads.
"""
import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from torch.nn import functional as F

POS_ENCODINGS = ("learned", "sinusoidal", "rope")


@dataclass
class GPTConfig:
    """Every hyperparameter of the model; a checkpoint stores `asdict(config)`."""
    block_size: int = 256  # context length: the most positions attention can see
    vocab_size: int = 65  # set from the dataset's tokenizer
    n_layer: int = 6  # Transformer blocks
    n_head: int = 6  # attention heads per block, each n_embd // n_head wide
    n_embd: int = 384  # width of the residual stream
    dropout: float = 0.0  # probability of zeroing an activation while training (0.2 for a model that overfits)
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

    @property
    def padded_vocab_size(self):
        """Rows of the embedding and the output head: vocab_size rounded up to a multiple of 64.

        GPU matmuls run at full speed on multiples of 64; GPT-2's 50,257 tokens become
        50,304. The extra rows are never read: their logits are cut off before any use.
        """
        return -(-self.vocab_size // 64) * 64


# --------------------------------------------------------------------------- position encodings

def sinusoidal_table(n_positions, dim):
    """The table from "Attention Is All You Need" (section 3.5), shape (n_positions, dim).

    PE(pos, 2i) = sin(pos / 10000^(2i/dim)),  PE(pos, 2i+1) = cos(pos / 10000^(2i/dim)).
    """
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (P, 1)
    two_i = torch.arange(0, dim, 2, dtype=torch.float64)  # (ceil(dim/2),)
    angles = pos / 10000 ** (two_i / dim)  # (P, ceil(dim/2))
    table = torch.zeros(n_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table.float()


def angle_dtype(device):
    """float64 for rotary angles, so positions far past the context stay exact; Apple's MPS has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def rotary_cos_sin(positions, head_size, base=10000.0):
    """cos and sin of the rotary angles for `positions`, each (T, head_size // 2).

    RoFormer (Su et al. 2021): dimension pair i of a head turns by pos * base^(-2i/d).
    """
    dtype = angle_dtype(positions.device)
    inv_freq = base ** (-torch.arange(0, head_size, 2, dtype=dtype, device=positions.device) / head_size)
    angles = positions.to(dtype)[:, None] * inv_freq[None, :]  # (T, hs/2)
    return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rotary(x, cos, sin):
    """Rotate each (first half, second half) pair of x (..., T, hs) by the given angles.

    A query at position m and a key at position n then score q.k as a function of
    m - n only, which is what lets a cache of rotated keys slide freely.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


# --------------------------------------------------------------------------- the KV cache

class KVCache:
    """Keys and values of every layer for the tokens seen since the last reset, so that
    generating a token costs one position's work.

    `window` is how many past positions a query may attend to (the model's
    block_size). The buffer holds `capacity` positions; when new tokens would not
    fit, the newest `window - 1` entries move to the front. With rotary positions
    that is all a slide needs, since cached keys carry only relative position.
    With absolute positions generation re-encodes instead (see generate.py).
    """

    def __init__(self, n_layer, batch_size, n_head, head_size, window, capacity, device, dtype):
        shape = (n_layer, batch_size, n_head, capacity, head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.window, self.capacity = window, capacity
        self.length = 0  # filled entries of the buffer
        self.pos = 0  # position of the next token since the last reset
        self.start = 0  # where the tokens of the current forward pass are written

    def reset(self):
        self.length = self.pos = 0

    def prepare(self, n_new):
        """Make room for n_new tokens; called once per forward pass, before the layers."""
        if n_new > self.window:
            raise ValueError(f"cannot add {n_new} tokens at once to a cache with a window of {self.window}")
        if self.length + n_new > self.capacity:
            keep = min(self.length, self.window - 1)
            self.k[:, :, :, :keep] = self.k[:, :, :, self.length - keep:self.length].clone()
            self.v[:, :, :, :keep] = self.v[:, :, :, self.length - keep:self.length].clone()
            self.length = keep
        self.start = self.length

    def update(self, layer, k, v):
        """Store this layer's new k, v (B, nh, T, hs); return what the queries attend to.

        Returns (keys, values, attn_mask, is_causal): keys and values are
        (B, nh, S, hs); attn_mask is None or a (T, S) boolean mask of allowed pairs.
        """
        T = k.shape[2]
        end = self.start + T
        self.k[layer, :, :, self.start:end] = k
        self.v[layer, :, :, self.start:end] = v
        lo = max(0, end - self.window - T + 1)  # the first new query still sees `window` keys
        keys, values = self.k[layer, :, :, lo:end], self.v[layer, :, :, lo:end]
        if T == 1:
            return keys, values, None, False  # one query sees every kept key
        if lo == 0 and self.start == 0:
            return keys, values, None, True  # a plain causal prefill
        q_idx = torch.arange(self.start, end, device=k.device)[:, None]
        k_idx = torch.arange(lo, end, device=k.device)[None, :]
        mask = (k_idx <= q_idx) & (k_idx > q_idx - self.window)
        return keys, values, mask, False

    def commit(self, n_new):
        """Count the tokens of the forward pass that just ran."""
        self.length += n_new
        self.pos += n_new


# --------------------------------------------------------------------------- the Transformer

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
        self.attn_dropout = nn.Dropout(config.dropout)  # the spelled-out form's; the fused kernel drops inside
        self.resid_dropout = nn.Dropout(config.dropout)

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
        elif self.causal and T > self.window:  # only rope models get here: attend to the last `window` positions
            i = torch.arange(T, device=x.device)
            mask, is_causal = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - self.window), False
        if self.spelled_out(q, k):
            y = self.explicit_attention(q, k, v, mask, is_causal)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                               dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, nh*hs): heads side by side
        return self.resid_dropout(self.c_proj(y))

    def spelled_out(self, q, k):
        """Whether to run explicit_attention rather than PyTorch's fused kernel.

        'auto' spells it out for bf16 training on a CPU with up to 512 keys, where the
        fused kernel's backward pass is slow: a third off the CPU recipe's step
        (docs/speed.md). With more keys, on GPUs, and when generating, the kernel wins.
        """
        if self.attention != "auto":
            return self.attention == "explicit"
        return (q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled()
                and k.shape[2] <= 512)

    def explicit_attention(self, q, k, v, mask, is_causal):
        """softmax(q k^T / sqrt(hs)) v, with future positions masked out: what the fused kernel computes.

        q (B, nh, T, hs), k and v (B, nh, S, hs) -> (B, nh, T, hs).
        """
        T, S = q.shape[2], k.shape[2]
        if is_causal:
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
        # Divided by sqrt(hs) so the scores keep unit variance as heads grow, and softmax
        # does not saturate into one-hot weights.
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, nh, T, S)
        if mask is not None:
            att = att.masked_fill(~mask, float("-inf"))  # no looking ahead
        att = self.attn_dropout(F.softmax(att, dim=-1))
        return att @ v


class MLP(nn.Module):
    """Position-wise feed-forward: widen 4x, GELU, project back."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

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
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)
        if config.pos_encoding == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        elif config.pos_encoding == "sinusoidal":
            self.register_buffer("pe", sinusoidal_table(config.block_size, config.n_embd), persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
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

    def forward(self, idx, targets=None, cache=None, last_only=False):
        """idx (B, T) token ids -> logits (B, T, vocab_size), and the mean loss if targets are given.

        With a cache, idx continues the tokens the cache holds. last_only computes
        the logits of the last position alone: all that generation needs.
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
        x = self.ln_f(x[:, -1:] if last_only else x)
        logits = self.lm_head(x)[..., :self.config.vocab_size]  # (B, T, vocab_size): padding cut off
        loss = None if targets is None else cross_entropy(logits, targets)
        return logits, loss

    def new_cache(self, batch_size, device=None, dtype=None):
        """An empty KVCache for this model, or None where a cache cannot serve (encoder blocks)."""
        if not self.config.causal:
            return None
        c, weight = self.config, self.wte.weight
        # Rotary caches slide in place; the extra room makes the slide's copy rare.
        capacity = 2 * c.block_size if c.pos_encoding == "rope" else c.block_size
        return KVCache(c.n_layer, batch_size, c.n_head, c.n_embd // c.n_head, c.block_size, capacity,
                       device or weight.device, dtype or weight.dtype)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None):
        """idx (B, T) with max_new_tokens sampled tokens appended, over the KV cache."""
        steps = generate_tokens(self, idx, max_new_tokens, temperature, top_k, top_p, generator)
        return check_finite(torch.cat([idx, *steps], dim=1))

    def configure_optimizer(self, learning_rate, weight_decay, betas, fused=None, params=None):
        """AdamW that decays matrices (weights of Linear and Embedding) and not biases or gains.

        params: the parameters to optimize, by default every trainable one (Muon takes
        the blocks' matrices and leaves the rest to this, see optim.py).
        """
        params = [p for p in (self.parameters() if params is None else params) if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    def flops_per_token(self):
        """Training FLOPs per token (PaLM, Chowdhery et al. 2022, appendix B).

        6N for the weights: forward and backward multiply each parameter three times,
        two FLOPs a multiply-add. Plus 12 * n_layer * n_embd * block_size for attention's
        scores and weighted sums, which have no parameters.
        """
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * c.block_size


# Logits scored at a time by cross_entropy: 128 MB in fp32.
LOSS_CHUNK_ELEMENTS = 1 << 25


def cross_entropy(logits, targets):
    """Mean next-token loss of logits (B, T, V) against targets (B, T), in fp32; targets of -1 are skipped.

    Scored a chunk of rows at a time: an fp32 copy of all the logits would sit beside
    the bf16 logits and the fp32 log-probabilities kept for the backward pass (at
    GPT-2's 50,304 tokens and 12 x 1,024 positions, 2.5 GB of 6).
    """
    logits, targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
    rows = max(1, LOSS_CHUNK_ELEMENTS // logits.size(1))
    total = sum(F.cross_entropy(chunk.float(), target, ignore_index=-1, reduction="sum")
                for chunk, target in zip(logits.split(rows), targets.split(rows)))
    return total / (targets != -1).sum()



# --------------------------------------------------------------------------- generation: from logits to tokens

NOT_FINITE = ("the model's logits are not finite (NaN or inf): a diverged checkpoint, an fp16 overflow, "
              "or a temperature so small that logits / temperature overflow (temperature 0 is greedy)")


def filter_top_k(logits, k):
    """Keep the k largest logits of each row; the rest become -inf."""
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits, p):
    """Nucleus filter (Holtzman et al. 2019): keep the smallest set of most likely tokens
    whose probability reaches p. The most likely token is always kept."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = F.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of the tokens ranked above
    drop_sorted = mass_before >= p  # the set already reached p without this token
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """logits (B, V) -> next tokens (B, 1). Temperature 0 picks the most likely token.

    A row whose logits are not all finite gets token -1 rather than an error here:
    testing it on the host would wait for the device at every token, and the
    caller reads the tokens anyway (check_finite).
    """
    logits = logits.float()
    if temperature > 0:
        logits = logits / temperature
    # A row holding NaN or +inf, or nothing but -inf, is no distribution: its log-sum-exp is not finite.
    finite = torch.isfinite(torch.logsumexp(logits, dim=-1, keepdim=True))  # (B, 1)
    logits = torch.where(finite, logits, 0.0)  # a row the draw may use, and whose token is replaced below
    if temperature == 0:
        token = torch.argmax(logits, dim=-1, keepdim=True)
    else:
        if top_k and top_k < logits.size(-1):  # k at or above the vocabulary keeps every token
            logits = filter_top_k(logits, top_k)
        if top_p is not None and top_p < 1.0:
            logits = filter_top_p(logits, top_p)
        token = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
    return torch.where(finite, token, -1)


def check_finite(tokens):
    """tokens, unless sample_next marked one as drawn from logits that are not finite."""
    if (tokens < 0).any():
        raise FloatingPointError(NOT_FINITE)
    return tokens


def window_start(model, start, length):
    """First token the model is given when `length` tokens exist and the last window began at `start`.

    Absolute positions stop at block_size: when the window is full, it drops its
    oldest quarter at once and is re-encoded from scratch. Re-encoding is a whole
    forward pass, so sliding one token per step would cost as much as no cache.
    Rotary models never re-encode: they attend over a sliding window of
    block_size positions (see GPT.forward), and the cache slides with it.
    """
    block = model.config.block_size
    if model.config.pos_encoding == "rope" or length - start <= block:
        return start
    if model.config.arch == "bigram":
        return length - 1  # it sees one token anyway
    return length - (3 * block) // 4


def prefill(model, tokens, cache):
    """Logits (B, V) after the prompt tokens (B, T), filling the cache; long rotary prompts go in
    window-sized chunks."""
    step = model.config.block_size if cache is not None else tokens.size(1)
    for i in range(0, tokens.size(1), step):
        logits = model(tokens[:, i:i + step], cache=cache, last_only=True)[0]
    return logits[:, -1]


@torch.inference_mode()  # no autograd bookkeeping at all: cheaper per op than no_grad
def generate_tokens(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None,
                    use_cache=True):
    """Yield max_new_tokens new tokens, each (B, 1), continuing the prompts idx (B, T).

    With the cache (the default) each step runs GPT.forward on the one new token;
    without it, on the whole window again. Both see exactly the same context.
    The work for a token is done when the caller asks for it (the generator's next).
    """
    tokens = idx
    start = window_start(model, 0, tokens.size(1))
    cache = model.new_cache(idx.size(0)) if use_cache else None
    logits = prefill(model, tokens[:, start:], cache)
    for i in range(max_new_tokens):
        next_token = sample_next(logits, temperature, top_k, top_p, generator)
        yield next_token
        if i == max_new_tokens - 1:
            break
        tokens = torch.cat((tokens, next_token.clamp(min=0)), dim=1)
        new_start = window_start(model, start, tokens.size(1))
        if cache is not None and new_start == start:
            logits = model(next_token.clamp(min=0), cache=cache)[0][:, -1]
        else:  # no cache, or absolute positions shifted: encode the kept window again
            if cache is not None:
                cache.reset()
            logits = prefill(model, tokens[:, new_start:], cache)
        start = new_start


# --------------------------------------------------------------------------- the bigram baseline

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

    def flops_per_token(self):
        return 6 * self.num_params()

    def forward(self, idx, targets=None, cache=None, last_only=False):
        logits = self.table(idx[:, -1:] if last_only else idx)  # (B, T, vocab_size)
        loss = None if targets is None else cross_entropy(logits, targets)
        return logits, loss

    def new_cache(self, batch_size, device=None, dtype=None):
        return None


def build_model(config, state_dict=None):
    """The model class that `config.arch` names: freshly initialised, or holding state_dict's weights."""
    model = (BigramLanguageModel if config.arch == "bigram" else GPT)(config)
    if state_dict is not None:
        model.load_state_dict(state_dict)  # strict: every weight is overwritten
    return model
