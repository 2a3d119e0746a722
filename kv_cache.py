"""Cached keys and values, so that generating a token costs one position's work."""
import torch


class KVCache:
    """Keys and values of every layer for the tokens seen since the last reset.

    `window` is how many past positions a query may attend to (the model's
    block_size). The buffer holds `capacity` positions; when new tokens would not
    fit, the newest `window - 1` entries move to the front. With rotary positions
    that is all a slide needs, since cached keys carry only relative position.
    With absolute positions the caller re-encodes instead (see sampling.py).
    """

    def __init__(self, n_layer, batch_size, n_head, head_size, window, capacity, device, dtype):
        assert capacity >= window
        shape = (n_layer, batch_size, n_head, capacity, head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.window = window
        self.capacity = capacity
        self.length = 0  # filled entries of the buffer
        self.pos = 0  # position of the next token since the last reset
        self._start = 0  # where the tokens of the current forward pass are written

    def reset(self):
        self.length = 0
        self.pos = 0

    def prepare(self, n_new):
        """Make room for n_new tokens; called once per forward pass, before the layers."""
        if n_new > self.window:
            raise ValueError(f"cannot add {n_new} tokens at once to a cache with a window of {self.window}")
        if self.length + n_new > self.capacity:
            keep = min(self.length, self.window - 1)
            src = slice(self.length - keep, self.length)
            self.k[:, :, :, :keep] = self.k[:, :, :, src].clone()
            self.v[:, :, :, :keep] = self.v[:, :, :, src].clone()
            self.length = keep
        self._start = self.length

    def update(self, layer, k, v):
        """Store this layer's new k, v (B, nh, T, hs); return what the queries attend to.

        Returns (keys, values, attn_mask, is_causal): keys and values are
        (B, nh, S, hs); attn_mask is None or a (T, S) boolean mask of allowed pairs.
        """
        T = k.shape[2]
        end = self._start + T
        layer_k, layer_v = self.k.select(0, layer), self.v.select(0, layer)
        layer_k.narrow(2, self._start, T).copy_(k)
        layer_v.narrow(2, self._start, T).copy_(v)
        lo = max(0, end - self.window - T + 1)  # the first new query still sees `window` keys
        keys, values = layer_k.narrow(2, lo, end - lo), layer_v.narrow(2, lo, end - lo)
        if T == 1:
            return keys, values, None, False  # one query sees every kept key
        if lo == 0 and self._start == 0:
            return keys, values, None, True  # a plain causal prefill
        q_idx = torch.arange(self._start, end, device=k.device)[:, None]
        k_idx = torch.arange(lo, end, device=k.device)[None, :]
        mask = (k_idx <= q_idx) & (k_idx > q_idx - self.window)
        return keys, values, mask, False

    def commit(self, n_new):
        """Count the tokens of the forward pass that just ran."""
        self.length += n_new
        self.pos += n_new
