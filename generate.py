"""Text in, text out: load a trained model with its tokenizer and generate.

    from generate import load
    gpt = load("out-shakespeare-char")
    print(gpt("ROMEO:", max_new_tokens=200))
    gpt2 = load("gpt2")                  # OpenAI's GPT-2 weights, or a local model.safetensors

`gpt.stream(prompt)` yields text as it is produced; sample.py is built on it.
"""
import torch

from checkpoint import load_model
from device import pick_device, pick_dtype
from errors import UserError
from gpt2_weights import is_gpt2_source, load_pretrained
from packed_linear import pack_linears
from sampling import generate_tokens
from tokenizer import GPT2Tokenizer


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
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        new_bytes = [bytearray() for _ in range(num_samples)]  # the tokenizer decodes each token once
        shown = [0] * num_samples  # characters of each sample already yielded
        done = [False] * num_samples
        steps = generate_tokens(self.model, idx, max_new_tokens, temperature, top_k, top_p, generator, use_cache)
        self.steps = 0
        for step, tokens in enumerate(steps):
            self.steps = step + 1
            last = step == max_new_tokens - 1
            pieces = []
            for i in range(num_samples):
                if done[i]:
                    pieces.append("")
                    continue
                new_bytes[i] += self.tokenizer.decode_bytes([int(tokens[i, 0])])
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

    The weights are cast to `dtype`; 'auto' is the precision training would pick on
    this device (bf16 on CPUs with bf16 matrix units). See for_inference.
    """
    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    if not is_gpt2_source(path):
        model, tokenizer, _ = load_model(path, device)
        return Generator(for_inference(model, dtype), tokenizer, device)
    tokenizer = GPT2Tokenizer()
    model = load_pretrained(path).to(device).eval()
    if model.config.vocab_size < tokenizer.vocab_size:
        raise UserError(f"{path} knows {model.config.vocab_size} tokens, fewer than GPT-2's {tokenizer.vocab_size}; "
                        "it cannot be used with the GPT-2 tokenizer")
    return Generator(for_inference(model, dtype), tokenizer, device)


def for_inference(model, dtype):
    """The model made ready to generate: in `dtype`, eval mode, and on CPU with weights laid out
    for one-row products.

    Generating a token reads every weight once, so half the bytes is much of the
    speed; the layers of packed_linear.py send each product to the kernel that
    is fastest for its number of rows, and let both cores share one-row products.
    """
    return pack_linears(model.to(dtype).eval())
