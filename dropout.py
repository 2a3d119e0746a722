"""Dropout with a random mask that is cheap to draw on a CPU.

PyTorch's CPU dropout draws one coin per element from a serial Mersenne
Twister (MKL's parallel generator is used on Intel CPUs only): about 7.5 ns an
element on an AMD CPU, a quarter of a bf16 training step of the GPU recipe at
dropout 0.2. Here each element gets 16 random bits instead, four from every
64-bit draw of the same generator (1.6 against 7.7 ns an element, measured side
by side), and is kept where they are at or above a threshold. Seeds,
`torch.get_rng_state` and exact resume work as with `F.dropout`. On other devices `F.dropout` is already one fused kernel and is
used as it is.
"""
import torch
import torch.nn as nn
from torch.nn import functional as F

LEVELS = 1 << 16  # 16 bits per element: p is rounded to a multiple of 1/65536


def drop_probability(p):
    """The probability the 16-bit mask drops an element with: p rounded to a multiple of 1/65536."""
    return round(p * LEVELS) / LEVELS


def dropout(x, p, training=True):
    """Zero each element of x with probability p and scale the rest by 1/(1 - p), as F.dropout does."""
    if not training or p == 0:
        return x
    rounded = drop_probability(p)
    # The 16-bit mask serves where rounding moves p, and 1 - p, by at most 0.1% (always
    # so for p between 0.0077 and 0.9923).
    if x.device.type != "cpu" or rounded >= 1 or abs(rounded - p) > 1e-3 * min(p, 1 - p):
        return F.dropout(x, p, training=True)
    return x * keep_mask(x, rounded)


def keep_mask(x, p):
    """A tensor like x: 1 / (1 - p) where an element is kept, 0 where it is dropped (probability p)."""
    n = x.numel()
    words = random_words((n + 3) // 4, x.device)
    lanes = words.view(torch.int16)[:n].view(x.shape)  # 4 lanes a word, each uniform on [-32768, 32767]
    keep = lanes >= round(p * LEVELS) - LEVELS // 2  # true with probability 1 - p
    # Read as bytes: PyTorch converts uint8 to floats about 3x faster than bool.
    return keep.view(torch.uint8).to(x.dtype).mul_(1 / (1 - p))


def random_words(n, device):
    """n 64-bit integers from torch's generator, every one of their bits uniform.

    torch.randint, unlike Tensor.random_, compiles into the graph: under torch.compile
    a bf16 step of the GPU recipe at dropout 0.2 took 557 ms this way and 832 ms with
    F.dropout, whose compiled mask is slow on a CPU.
    """
    return torch.randint(-2 ** 63, 2 ** 63 - 1, (n,), dtype=torch.int64, device=device)


class Dropout(nn.Module):
    """nn.Dropout, drawing its mask with `dropout` above."""

    def __init__(self, p=0.0):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"dropout must be between 0 and 1, not {p}")
        self.p = p

    def forward(self, x):
        return dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"
