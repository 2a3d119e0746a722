"""Turning logits into tokens: temperature, top-k, top-p, and the generation loop.

The loop runs with a KV cache (the default) or by recomputing the whole context
for every token; both see exactly the same context at every step. In fp32 their
logits agree within 1e-6 (a few kernels differ in the last bits), so they give
the same tokens unless two candidates tie that closely; tests hold them to it.
"""
import torch
from torch.nn import functional as F

from decode import Decoder
from errors import UserError


def filter_top_k(logits, k):
    """Keep the k largest logits of each row; the rest become -inf."""
    k = min(k, logits.size(-1))
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


def draw(probs, generator=None):
    """One token per row of probs (B, V), each with its probability: (B, 1).

    The argmax of p / q with q ~ Exp(1) picks token i with probability p_i (the
    Gumbel-max trick, exponentiated). torch.multinomial draws one sample the same
    way, from the same random numbers, so the tokens are the same for a seed; it
    first checks the probabilities with four reductions, which took it 14 us
    against 6 us here for 65 tokens, the most expensive op of a sampled token.
    A row of NaN gives token 0: sample_next checks for those, with one cheap test.
    """
    q = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / q).argmax(dim=-1, keepdim=True)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """logits (B, V) -> next tokens (B, 1). Temperature 0 picks the most likely token."""
    if temperature == 0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k and top_k < logits.size(-1):  # k >= vocabulary keeps every token: nothing to filter
        logits = filter_top_k(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = filter_top_p(logits, top_p)
    probs = F.softmax(logits, dim=-1)
    if probs[:, 0].isnan().any():  # a NaN or infinite logit makes its whole row NaN
        raise UserError("the model's logits are not finite (NaN or inf): a diverged checkpoint, an fp16 overflow, "
                        "or a temperature so small that logits / temperature overflow; --temperature 0 is greedy")
    return draw(probs, generator)


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
    """Logits for the prompt, filling the cache; long rotary prompts go in window-sized chunks."""
    if cache is None or tokens.size(1) <= model.config.block_size:
        return model(tokens, cache=cache)[0]
    step = model.config.block_size
    chunks = [model(tokens[:, i:i + step], cache=cache)[0] for i in range(0, tokens.size(1), step)]
    return torch.cat(chunks, dim=1)


@torch.inference_mode()  # no autograd bookkeeping at all: cheaper per op than no_grad
def generate_tokens(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                    generator=None, use_cache=True):
    """Yield max_new_tokens new tokens, each (B, 1), continuing the prompts idx (B, T)."""
    tokens = idx
    start = window_start(model, 0, tokens.size(1))
    cache = model.new_cache(idx.size(0)) if use_cache else None
    decode = Decoder(model) if cache is not None else None  # the layers looked up once, not at every token
    logits = prefill(model, tokens[:, start:], cache)[:, -1]
    for _ in range(max_new_tokens):
        next_token = sample_next(logits, temperature, top_k, top_p, generator)
        yield next_token
        tokens = torch.cat((tokens, next_token), dim=1)
        new_start = window_start(model, start, tokens.size(1))
        if cache is None:
            logits = model(tokens[:, new_start:])[0][:, -1]
        elif new_start != start and model.config.pos_encoding != "rope":
            cache.reset()  # absolute positions shifted: re-encode the kept window
            logits = model(tokens[:, new_start:], cache=cache)[0][:, -1]
        else:
            logits = decode(next_token, cache)
        start = new_start
