"""Generation: turning logits into tokens, the token loop over the KV cache, and text in, text out.

    from generate import load
    gpt = load("out-shakespeare-char")
    print(gpt("ROMEO:", max_new_tokens=200))
    gpt2 = load("gpt2")                  # OpenAI's GPT-2 weights, or a local model.safetensors

`gpt.stream(prompt)` yields text as it is produced; sample.py is built on it.
"""
import contextlib

import torch
from torch.nn import functional as F

from checkpoint import load_model
from common import UserError, pick_device, pick_dtype
from gpt2 import is_gpt2_source, load_pretrained
from prepare import GPT2Tokenizer

NOT_FINITE = ("the model's logits are not finite (NaN or inf): a diverged checkpoint, an fp16 overflow, "
              "or a temperature so small that logits / temperature overflow; --temperature 0 is greedy")


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
        raise UserError(NOT_FINITE)
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


@contextlib.contextmanager
def without_onednn():
    """Within it, PyTorch's CPU ops do not use oneDNN (a process-wide switch, restored after).

    One sample's token is one-row products: oneDNN runs a one-row bf16 product on
    one core, and each of its calls has a fixed cost larger than a one-token op's
    work; PyTorch's own kernels use every core (docs/speed.md has the figures).
    """
    was = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = was


@torch.inference_mode()  # no autograd bookkeeping at all: cheaper per op than no_grad
def generate_tokens(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None,
                    use_cache=True):
    """Yield max_new_tokens new tokens, each (B, 1), continuing the prompts idx (B, T).

    With the cache (the default) each step runs GPT.forward on the one new token;
    without it, on the whole window again. Both see exactly the same context.
    """
    tokens = idx
    one_row_on_cpu = idx.device.type == "cpu" and idx.size(0) == 1  # steps without oneDNN (see without_onednn)
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
            with without_onednn() if one_row_on_cpu else contextlib.nullcontext():
                logits = model(next_token.clamp(min=0), cache=cache)[0][:, -1]
        else:  # no cache, or absolute positions shifted: encode the kept window again
            if cache is not None:
                cache.reset()
            logits = prefill(model, tokens[:, new_start:], cache)
        start = new_start


def _valid_utf8_prefix(data):
    """The longest prefix of data that decodes, holding back a multi-byte character cut in two."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start >= len(data) - 3:  # an incomplete character at the end: wait for the rest
            return data[:e.start].decode("utf-8", errors="replace")
        return data.decode("utf-8", errors="replace")


class Generator:
    """A model and its tokenizer on one device, ready to continue prompts."""

    def __init__(self, model, tokenizer, device):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.steps = 0  # tokens generated per sample by the latest call, fewer than asked when all stopped early

    def stream_batch(self, prompt, num_samples=1, max_new_tokens=500, temperature=0.8, top_k=200, top_p=None,
                     stop=None, seed=None, use_cache=True):
        """Yield, at each step, a list with each sample's new text (empty once a sample has stopped).

        Text that could be the start of a stop string is held back until it is
        known not to be one, so a stop string is never shown.
        """
        stops = [s for s in ([stop] if isinstance(stop, str) else stop or []) if s]
        hold = max((len(s) for s in stops), default=1) - 1
        ids = self.tokenizer.encode(prompt) if prompt else []
        if not ids:  # start from GPT-2's <|endoftext|>, or token 0 (newline for character models)
            ids = [getattr(self.tokenizer, "eot_token", 0)]
        idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=self.device)
        generator = None if seed is None else torch.Generator(device=self.device).manual_seed(seed)
        new_bytes = [bytearray() for _ in range(num_samples)]  # the tokenizer decodes each token once
        shown = [0] * num_samples  # characters of each sample already yielded
        done = [False] * num_samples
        steps = generate_tokens(self.model, idx, max_new_tokens, temperature, top_k, top_p, generator, use_cache)
        self.steps = 0
        for step, tokens in enumerate(steps):
            self.steps = step + 1
            last = step == max_new_tokens - 1
            tokens = tokens.view(-1).tolist()  # the one wait for the device per step
            if min(tokens) < 0:
                raise UserError(NOT_FINITE)
            pieces = []
            for i, token in enumerate(tokens):
                if done[i]:
                    pieces.append("")
                    continue
                new_bytes[i] += self.tokenizer.decode_bytes([token])
                text = _valid_utf8_prefix(new_bytes[i])
                cut = min((text.find(s) for s in stops if s in text), default=-1)
                if cut >= 0:
                    text, done[i] = text[:cut], True
                visible = len(text) if done[i] or last else max(shown[i], len(text) - hold)
                pieces.append(text[shown[i]:visible])
                shown[i] = visible
            yield pieces
            if all(done):
                break

    def stream(self, prompt, **kwargs):
        """Yield the continuation of prompt piece by piece, as it is generated."""
        for pieces in self.stream_batch(prompt, num_samples=1, **kwargs):
            if pieces[0]:
                yield pieces[0]

    def __call__(self, prompt, num_samples=1, **kwargs):
        """prompt + its continuation; a list of num_samples texts when num_samples > 1."""
        texts = [prompt] * num_samples
        for pieces in self.stream_batch(prompt, num_samples=num_samples, **kwargs):
            texts = [t + p for t, p in zip(texts, pieces)]
        return texts[0] if num_samples == 1 else texts


def load(path="out-shakespeare-char", device="auto", dtype="auto"):
    """A Generator on the best device for a trained checkpoint (an out_dir or a .pt file)
    or for GPT-2's weights (gpt2 ... gpt2-xl, a model.safetensors file or a folder holding one).

    The weights are cast to `dtype`; 'auto' is the precision training would pick
    on this device (see common.pick_dtype).
    """
    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    if is_gpt2_source(path):
        tokenizer = GPT2Tokenizer()
        model = load_pretrained(path)
        if model.config.vocab_size < tokenizer.vocab_size:
            raise UserError(f"{path} knows {model.config.vocab_size} tokens, fewer than GPT-2's "
                            f"{tokenizer.vocab_size}; it cannot be used with the GPT-2 tokenizer")
    else:
        model, tokenizer, _ = load_model(path)
    # Cast on the host, then move: half the bytes travel to a GPU in bf16.
    return Generator(model.to(dtype).to(device).eval(), tokenizer, device)
