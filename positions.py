"""Position encodings that are not learned: the sinusoidal table and rotary embeddings.

Learned positions are a plain nn.Embedding inside GPT. The two here are fixed
functions of the position, so they have no parameters.
"""
import torch


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


def rotary_cos_sin(positions, head_size, base=10000.0):
    """cos and sin of the rotary angles for `positions`, each (T, head_size // 2).

    RoFormer (Su et al. 2021): dimension pair i of a head turns by pos * base^(-2i/d).
    Angles are computed in float64 so positions far past the context stay exact.
    """
    inv_freq = base ** (-torch.arange(0, head_size, 2, dtype=torch.float64, device=positions.device) / head_size)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (T, hs/2)
    return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rotary(x, cos, sin):
    """Rotate each (first half, second half) pair of x (B, nh, T, hs) by the given angles.

    A query at position m and a key at position n then score q.k as a function of
    m - n only, which is what lets a cache of rotated keys slide freely.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
