# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Let's build GPT, with this library
#
# The path of the lecture "Let's build GPT: from scratch, in code, spelled out", in order. Each step writes
# the few lines of tensor code the lecture spells out, then checks them against this library's own piece with
# an `assert`: the tokenizer, the batches, the bigram model, `CausalSelfAttention`, `MLP`, `Block`, `GPT`, the
# training step and `generate.load`. It runs on a laptop CPU in about a minute.
#
# Open it from a checkout with the project installed (`pip install -e .`); `notebooks/build_gpt.py` is the
# same notebook as a plain script (jupytext's percent format).

# %%
import math
import os
import tempfile

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

import model as library
from model import GPT, Block, CausalSelfAttention, GPTConfig, MLP

torch.manual_seed(1337)
ROOT = os.path.dirname(os.path.abspath(library.__file__))  # the checkout

# %% [markdown]
# ## 1. Reading the data
#
# Tiny Shakespeare: 1 MB of plays in one text file. `python prepare.py` downloads it into
# `data/shakespeare_char/`; offline, `python prepare.py --input PATH` prepares a local copy, and the text is
# read back from the tokens it wrote. `TINY_SHAKESPEARE` may point at a copy instead.

# %%
from common import download
from prepare import SHAKESPEARE_URL
from tokenizer import load_dataset, load_tokenizer

prepared = os.path.join(ROOT, "data", "shakespeare_char")
path = os.environ.get("TINY_SHAKESPEARE") or os.path.join(prepared, "input.txt")
if not os.path.exists(path) and os.path.exists(os.path.join(prepared, "meta.json")):
    saved_meta, saved = load_dataset(os.path.join(ROOT, "data"), "shakespeare_char")
    text = load_tokenizer(saved_meta).decode(np.concatenate(saved["train"] + saved["val"]).tolist())
else:
    if not os.path.exists(path):
        download(SHAKESPEARE_URL, path, offline="run python prepare.py --input PATH/input.txt, then this notebook")
    with open(path, encoding="utf-8") as f:
        text = f.read()
print(f"{len(text):,} characters")
print(text[:250])

# %% [markdown]
# ## 2. Tokenization and the train/val split
#
# The vocabulary is the sorted set of characters; a token is a character's index. The first 90% of the tokens
# train, the last 10% validate. `CharTokenizer` and `prepare.py` do the same.

# %%
from prepare import prepare
from tokenizer import CharTokenizer

chars = sorted(set(text))
vocab_size = len(chars)
stoi = {ch: i for i, ch in enumerate(chars)}
itos = {i: ch for i, ch in enumerate(chars)}
encode = lambda s: [stoi[c] for c in s]  # noqa: E731
decode = lambda ids: "".join(itos[i] for i in ids)  # noqa: E731
print(vocab_size, repr("".join(chars)))
print(encode("hii there"), decode(encode("hii there")))

tokenizer = CharTokenizer.from_text(text)
assert tokenizer.chars == chars and tokenizer.encode("hii there") == encode("hii there")

data = torch.tensor(encode(text), dtype=torch.long)
n = int(0.9 * len(data))
train_data, val_data = data[:n], data[n:]

workdir = tempfile.mkdtemp()
with open(os.path.join(workdir, "input.txt"), "w", encoding="utf-8") as f:
    f.write(text)
meta = prepare(os.path.join(workdir, "input.txt"), "shakespeare_char", "char", data_root=workdir)
train_bin = np.memmap(os.path.join(workdir, "shakespeare_char", "train.bin"), dtype=np.uint16, mode="r")
assert meta["train_tokens"] == len(train_data) and np.array_equal(train_bin, train_data.numpy())

# %% [markdown]
# ## 3. Batches of chunks
#
# A chunk of `block_size + 1` tokens holds `block_size` examples at once: each prefix predicts the token after
# it. A batch stacks chunks from random places. `train.Batches` draws the same windows from the same random
# numbers.

# %%
from train import Batches

block_size, batch_size = 8, 4
x, y = train_data[:block_size], train_data[1:block_size + 1]
for t in range(3):
    print(f"when the input is {x[:t + 1].tolist()} the target is {y[t].item()}")


def get_batch(split, generator=None):
    source = train_data if split == "train" else val_data
    ix = torch.randint(len(source) - block_size, (batch_size,), generator=generator)
    xb = torch.stack([source[i:i + block_size] for i in ix])
    yb = torch.stack([source[i + 1:i + block_size + 1] for i in ix])
    return xb, yb


xb, yb = get_batch("train", torch.Generator().manual_seed(0))
batches = Batches(train_bin, block_size, batch_size, torch.device("cpu"), torch.Generator().manual_seed(0))
bx, by = batches.sample()
assert torch.equal(xb, bx) and torch.equal(yb, by)
print(xb)

# %% [markdown]
# ## 4. The bigram baseline and its loss
#
# Each token looks up the logits of the next in a table. Before training every token is about equally likely,
# so the loss is near -ln(1/65) = ln(65).

# %%
from model import build_model

bigram = build_model(GPTConfig(arch="bigram", vocab_size=vocab_size))
logits, loss = bigram(xb, yb)
spelled_out = F.cross_entropy(bigram.table.weight[xb].view(-1, vocab_size), yb.view(-1))
assert torch.allclose(loss, spelled_out)
print(f"loss at init {loss.item():.4f}, ln(65) = {math.log(vocab_size):.4f}")
assert abs(loss.item() - math.log(vocab_size)) < 0.1

optimizer = torch.optim.AdamW(bigram.parameters(), lr=1e-2)
batch_size = 32
for step in range(1000):
    xb, yb = get_batch("train")
    logits, loss = bigram(xb, yb)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
print(f"after 1,000 steps: {loss.item():.4f}")
print(decode(bigram.generate(torch.zeros((1, 1), dtype=torch.long), max_new_tokens=200)[0].tolist()))

# %% [markdown]
# ## 5. The trick in self-attention: averages of the past
#
# Let each position gather the mean of itself and the positions before it. Version 1 loops; version 2 is
# one matrix multiply by a lower-triangular matrix of weights; version 3 makes those weights with a softmax
# over a causal mask, so they can become data-dependent. `CausalSelfAttention.explicit_attention` with equal
# scores everywhere is exactly version 3.

# %%
B, T, C = 4, 8, 2
x = torch.randn(B, T, C)

xbow = torch.zeros((B, T, C))  # version 1: for loops
for b in range(B):
    for t in range(T):
        xbow[b, t] = x[b, :t + 1].mean(0)

weights = torch.tril(torch.ones(T, T))  # version 2: a matrix multiply
weights = weights / weights.sum(1, keepdim=True)
xbow2 = weights @ x  # (T, T) @ (B, T, C) -> (B, T, C)

tril = torch.tril(torch.ones(T, T))  # version 3: softmax over a causal mask
weights = torch.zeros((T, T)).masked_fill(tril == 0, float("-inf"))
weights = F.softmax(weights, dim=-1)
xbow3 = weights @ x

attn = CausalSelfAttention(GPTConfig(n_embd=C, n_head=1, block_size=T, attention="explicit"))
zeros = torch.zeros(B, 1, T, C)  # queries and keys of zeros: every score equal
library_mean = attn.explicit_attention(zeros, zeros, x[:, None], None, True)[:, 0]
assert torch.allclose(xbow, xbow2, atol=1e-6) and torch.allclose(xbow, xbow3, atol=1e-6)
assert torch.allclose(xbow, library_mean, atol=1e-6)
print(weights)

# %% [markdown]
# ## 6. Self-attention: queries, keys and values, and several heads
#
# Every token emits a query (what it looks for) and a key (what it holds); their dot product, scaled by
# 1/sqrt(head_size), is its affinity with another token, masked so that no token sees the future; the softmax
# of the affinities weights the tokens' values. Several heads do this side by side on slices of the channels,
# and a projection mixes their outputs. Below, the spelled-out heads use the weights of the library's
# `CausalSelfAttention`, in both of its forms: the formula written out, and PyTorch's fused kernel.

# %%
B, T, C, n_head = 4, 8, 32, 4
hs = C // n_head
config = GPTConfig(n_embd=C, n_head=n_head, block_size=T, bias=False, attention="explicit")
attn = CausalSelfAttention(config).eval()
x = torch.randn(B, T, C)

W_q, W_k, W_v = attn.c_attn.weight.split(C, dim=0)  # each (C, C): head h owns rows h*hs to (h+1)*hs
tril = torch.tril(torch.ones(T, T))
heads = []
for h in range(n_head):
    rows = slice(h * hs, (h + 1) * hs)
    q, k, v = x @ W_q[rows].T, x @ W_k[rows].T, x @ W_v[rows].T  # each (B, T, hs)
    weights = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, T, T)
    weights = weights.masked_fill(tril == 0, float("-inf"))
    heads.append(F.softmax(weights, dim=-1) @ v)  # (B, T, hs)
out = torch.cat(heads, dim=-1) @ attn.c_proj.weight.T  # (B, T, C)

fused = CausalSelfAttention(GPTConfig(n_embd=C, n_head=n_head, block_size=T, bias=False, attention="sdpa")).eval()
fused.load_state_dict(attn.state_dict())
with torch.no_grad():
    assert torch.allclose(out, attn(x), atol=1e-5) and torch.allclose(out, fused(x), atol=1e-5)
print("spelled-out heads == CausalSelfAttention (explicit and sdpa)")

# %% [markdown]
# ## 7. Attention is communication over a set
#
# Attention has no notion of space: without the causal mask and without position encodings, shuffling the
# tokens only shuffles the outputs. Nor does it mix the examples of a batch: changing one leaves the others'
# outputs as they were.

# %%
encoder = CausalSelfAttention(GPTConfig(n_embd=C, n_head=n_head, block_size=T, causal=False)).eval()
perm = torch.randperm(T)
with torch.no_grad():
    assert torch.allclose(encoder(x)[:, perm], encoder(x[:, perm]), atol=1e-5)  # a set, in any order
    other = x.clone()
    other[1] = torch.randn(T, C)  # a different example in row 1
    assert torch.allclose(attn(other)[0], attn(x)[0], atol=1e-6) and torch.allclose(attn(other)[2:], attn(x)[2:], atol=1e-6)
print("permuted in, permuted out; batch rows never exchange information")

# %% [markdown]
# ## 8. Encoder and decoder blocks: what the mask does
#
# A decoder block (`causal=True`) lets a position see only the past; an encoder block (`causal=False`) lets
# every position see every other. For a language model that is cheating: the next token is in plain view.
# Trained side by side for 150 steps (with rotary positions, which make "the token after me" easy to find),
# the model without the mask drives its loss far lower, and learns nothing it could use to generate.

# %%
def tiny_gpt(**kwargs):
    torch.manual_seed(0)
    settings = dict(vocab_size=vocab_size, n_layer=2, n_head=4, n_embd=64, block_size=32) | kwargs
    return GPT(GPTConfig(**settings))


def train_steps(model, steps, lr=3e-3, batch=16, block=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    batches = Batches(train_bin, block, batch, torch.device("cpu"), generator)
    optimizer = model.configure_optimizer(lr, 0.0, (0.9, 0.99))
    for _ in range(steps):
        xb, yb = batches.sample()
        loss = model(xb, yb)[1]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss.item()


decoder, cheat = tiny_gpt(pos_encoding="rope"), tiny_gpt(pos_encoding="rope", causal=False)
idx = torch.randint(vocab_size, (1, 32))
later = idx.clone()
later[0, -1] = (idx[0, -1] + 1) % vocab_size  # change the last token only
with torch.no_grad():
    assert torch.equal(decoder(idx)[0][0, 0], decoder(later)[0][0, 0])  # position 0 cannot see it
    assert not torch.equal(cheat(idx)[0][0, 0], cheat(later)[0][0, 0])  # without the mask, it can
losses = {"causal": train_steps(decoder, 150), "no mask": train_steps(cheat, 150)}
print({k: round(v, 3) for k, v in losses.items()})
assert losses["no mask"] < losses["causal"] - 0.5

# %% [markdown]
# ## 9. Why divide by sqrt(head_size)
#
# With unit-variance queries and keys, a dot product over `head_size` dimensions has variance `head_size`.
# Unscaled, the scores grow with the head, and the softmax saturates towards one-hot: each token listens to
# a single other. Scaled, the weights stay spread out at every head size.

# %%
for head_size in (16, 64, 256):
    q, k = torch.randn(8, 32, head_size), torch.randn(8, 32, head_size)
    scores = q @ k.transpose(-2, -1)
    raw = F.softmax(scores, dim=-1).amax(-1).mean().item()
    scaled = F.softmax(scores / math.sqrt(head_size), dim=-1).amax(-1).mean().item()
    print(f"head size {head_size:3}: score variance {scores.var().item():6.1f}; "
          f"largest weight {raw:.2f} unscaled, {scaled:.2f} scaled")
assert raw > 0.8 and scaled < 0.3  # at 256: nearly one-hot without the scale

# %% [markdown]
# ## 10. Positional encoding
#
# Since attention sees a set, the order must be added. The lecture learns a table of positions (`learned`);
# "Attention Is All You Need" adds fixed sines and cosines (`sinusoidal`); rotary embeddings (`rope`) turn the
# queries and keys by an angle per position, so a score depends only on the distance between two tokens.
# Each trains a small model for 150 steps here.

# %%
from model import apply_rotary, rotary_cos_sin, sinusoidal_table

table = sinusoidal_table(16, 8)
assert abs(table[5, 2].item() - math.sin(5 / 10000 ** (2 / 8))) < 1e-6  # PE(pos, 2i) = sin(pos / 10000^(2i/d))
q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)


def rotary_score(m, n):
    cos, sin = rotary_cos_sin(torch.tensor([m, n]), 8)
    return (apply_rotary(q, cos[:1], sin[:1]) * apply_rotary(k, cos[1:], sin[1:])).sum().item()


assert abs(rotary_score(5, 2) - rotary_score(105, 102)) < 1e-4  # only the distance counts
print("rotary: score(5, 2) =", round(rotary_score(5, 2), 4), "= score(105, 102) =", round(rotary_score(105, 102), 4))
for encoding in ("learned", "sinusoidal", "rope"):
    print(f"{encoding:>10}: loss after 150 steps {train_steps(tiny_gpt(pos_encoding=encoding), 150):.3f}")

# %% [markdown]
# ## 11. Feed-forward, residual connections, LayerNorm: the block
#
# After communicating, each token thinks on its own: a feed-forward layer widens it 4x, applies GELU and
# projects back. Residual connections add each sublayer's output to its input, so gradients flow straight
# through a deep stack; LayerNorm (here before each sublayer, as in GPT-2) normalizes each token's features.

# %%
mlp = MLP(GPTConfig(n_embd=C, n_head=n_head))
block = Block(GPTConfig(n_embd=C, n_head=n_head, block_size=T)).eval()


def layer_norm(x, ln):
    mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


with torch.no_grad():
    assert torch.allclose(mlp(x), mlp.c_proj(F.gelu(mlp.c_fc(x))), atol=1e-6)
    assert torch.allclose(layer_norm(x, block.ln_1), block.ln_1(x), atol=1e-5)
    h = x + block.attn(layer_norm(x, block.ln_1))  # communicate
    h = h + block.mlp(layer_norm(h, block.ln_2))  # compute
    assert torch.allclose(h, block(x), atol=1e-5)
print("x + attn(ln(x)), then + mlp(ln(.)) == Block(x)")

# %% [markdown]
# ## 12. Dropout
#
# While training, dropout zeroes a random fraction p of activations and scales the rest by 1/(1-p), so the
# network cannot lean on any one path; in eval mode it does nothing.

# %%
dropout = nn.Dropout(0.2)
ones = torch.ones(10_000)
print(f"zeroed {(dropout(ones) == 0).float().mean().item():.3f}, kept ones scaled to {dropout(ones).max().item():.3f}")
model = tiny_gpt(dropout=0.2)
with torch.no_grad():
    assert not torch.equal(model.train()(idx)[0], model(idx)[0])  # two different masks
    assert torch.equal(model.eval()(idx)[0], model(idx)[0])  # no dropout when evaluating

# %% [markdown]
# ## 13. Scaling up: train a GPT
#
# The whole model: token and position embeddings, blocks, a final LayerNorm, and an output head that shares
# the embedding's weights. Trained here for a few hundred steps with `train.optimizer_step`, the step
# `train.py` takes, and evaluated with `train.estimate_loss`.

# %%
from optim import Distributed
from train import estimate_loss, optimizer_step

torch.manual_seed(1337)
config = GPTConfig(vocab_size=vocab_size, n_layer=4, n_head=4, n_embd=128, block_size=64, bias=False)
gpt = GPT(config)
print(f"{gpt.num_params():,} parameters")
optimizer = gpt.configure_optimizer(3e-3, 0.1, (0.9, 0.99))
generator = torch.Generator().manual_seed(1337)
train_batches = Batches(train_bin, config.block_size, 16, torch.device("cpu"), generator)
val_bin = np.memmap(os.path.join(workdir, "shakespeare_char", "val.bin"), dtype=np.uint16, mode="r")
eval_batches = {"train": train_batches, "val": Batches(val_bin, config.block_size, 16, torch.device("cpu"), generator)}
no_autocast, scaler = torch.autocast("cpu", enabled=False), torch.amp.GradScaler("cpu", enabled=False)
for step in range(401):
    if step % 100 == 0:
        losses = estimate_loss(gpt, eval_batches, 10, no_autocast, Distributed())
        print(f"step {step}: train {losses['train']:.3f}, val {losses['val']:.3f}")
    if step < 400:
        optimizer_step(gpt, optimizer, [train_batches.sample()], no_autocast, scaler, grad_clip=1.0)
assert losses["val"] < 2.3  # from ln(65) = 4.17

# %% [markdown]
# ## 14. Sampling from it
#
# Saved as `train.py` saves its best model, loaded with `generate.load`, and sampled token by token over the
# KV cache.

# %%
from dataclasses import asdict

from checkpoint import save_checkpoint
from generate import load

out_dir = os.path.join(workdir, "out")
save_checkpoint({"model": gpt.state_dict(), "model_config": asdict(config), "tokenizer": tokenizer.to_meta()},
                os.path.join(out_dir, "ckpt.pt"))
gen = load(out_dir, device="cpu")
sample = gen("ROMEO:", max_new_tokens=300, seed=1337)
print(sample)
assert sample.startswith("ROMEO:") and len(sample) == len("ROMEO:") + 300

# %% [markdown]
# ## 15. Pre-training and fine-tuning
#
# What this notebook did is pre-training: learning to continue text from scratch. ChatGPT's base model did
# the same on a large share of the internet, then was fine-tuned (supervised examples, then reinforcement
# learning from human feedback) to answer rather than continue. This library fine-tunes in the first sense:
# it starts from OpenAI's GPT-2 weights and trains on your text:
#
#     python prepare.py --tokenizer gpt2 && python train.py config/finetune_shakespeare.py
#
# `checkpoint.py` loads the four sizes OpenAI released:

# %%
from checkpoint import GPT2_SIZES

for name, shape in GPT2_SIZES.items():
    with torch.device("meta"):  # shapes only: no memory, no time
        size = GPT(GPTConfig(vocab_size=50257, block_size=1024, **shape)).num_params()
    print(f"{name:12} {shape}  {size / 1e6:,.0f}M parameters, without the position table")
