"""Text in, text out: a trained model and its tokenizer, ready to continue prompts.

    from generate import load
    gpt = load("out-shakespeare-char")
    print(gpt("ROMEO:", max_new_tokens=200))
    gpt2 = load("gpt2")                  # OpenAI's GPT-2 weights, or a local model.safetensors

`gpt.stream(prompt)` yields text as it is produced; sample.py is built on it.
The tokens come from model.generate_tokens, one GPT.forward over the KV cache each.
"""
import codecs
import contextlib

import torch

from checkpoint import load_model
from common import UserError, pick_device, pick_dtype
from model import check_finite, generate_tokens


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


class Generator:
    """A model and its tokenizer on one device, ready to continue prompts."""

    def __init__(self, model, tokenizer, device):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.steps = 0  # tokens generated per sample by the latest call, fewer than asked when all stopped early

    def stream_batch(self, prompt, num_samples=1, max_new_tokens=500, temperature=0.8, top_k=200, top_p=None,
                     stop=None, seed=None, use_cache=True):
        """Yield, at each step, a list with each sample's new text (empty once a sample has stopped).

        Each sample's bytes go through an incremental UTF-8 decoder once, so a
        character split across tokens appears when its last byte arrives, and a
        byte that is not UTF-8 shows as U+FFFD, as bytes.decode(errors="replace")
        shows it. Text that could be the start of a stop string is held back until
        it is known not to be one, so a stop string is never shown.
        """
        stops = [s for s in ([stop] if isinstance(stop, str) else stop or []) if s]
        hold = max((len(s) for s in stops), default=1) - 1
        ids = self.tokenizer.encode(prompt) if prompt else []
        if not ids:  # start from GPT-2's <|endoftext|>, or token 0 (newline for character models)
            ids = [getattr(self.tokenizer, "eot_token", 0)]
        idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=self.device)
        generator = None if seed is None else torch.Generator(device=self.device).manual_seed(seed)
        decoders = [codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in range(num_samples)]
        pending = [""] * num_samples  # each sample's decoded text not yet shown
        done = [False] * num_samples
        steps = generate_tokens(self.model, idx, max_new_tokens, temperature, top_k, top_p, generator, use_cache)
        one_row_on_cpu = self.device.type == "cpu" and num_samples == 1
        self.steps = 0
        for step in range(max_new_tokens):
            with without_onednn() if one_row_on_cpu else contextlib.nullcontext():
                tokens = next(steps)  # the model's work for this token happens here
            try:
                tokens = check_finite(tokens).view(-1).tolist()  # the one wait for the device per step
            except FloatingPointError as e:
                raise UserError(str(e)) from None
            self.steps, last = step + 1, step == max_new_tokens - 1
            pieces = []
            for i, token in enumerate(tokens):
                if done[i]:
                    pieces.append("")
                    continue
                text = pending[i] + decoders[i].decode(self.tokenizer.decode_bytes([token]), final=last)
                cut = min((text.find(s) for s in stops if s in text), default=-1)
                if cut >= 0:
                    text, done[i] = text[:cut], True
                shown = len(text) if done[i] or last else max(0, len(text) - hold)
                pieces.append(text[:shown])
                pending[i] = text[shown:]
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
    model, tokenizer, _ = load_model(path)
    # Cast on the host, then move: half the bytes travel to a GPU in bf16.
    return Generator(model.to(dtype).to(device).eval(), tokenizer, device)
