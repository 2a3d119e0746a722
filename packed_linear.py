"""Linear layers whose weights are laid out once for fast products on a CPU, for generation.

Generating a token multiplies one row by every weight matrix: 25 products per
token for the 6-layer model, each reading its whole weight. PyTorch's plain
nn.Linear is slow at that on a CPU, differently in each precision:

- bf16: oneDNN copies a plain (out, in) weight into its own blocked layout on
  every call. PackedLinear lays it out once for products of several rows: a
  token's products took 1.0 ms instead of 2.1 on a 2-core Zen 4 (10.7M
  parameters), bit for bit the same, and it applies each MLP's GELU within its
  first product's call. oneDNN runs a one-row product on one core, though, so
  a single row goes instead to PyTorch's own matrix-vector product on the
  plain weight, which uses both.
- fp32: MKL's matrix-vector product runs on one core, and oneDNN's packed one
  carries about 15 us of fixed cost per call. SplitLinear sees the weight as
  two halves of its output rows, so MKL's batched product runs one half on each
  core, as dot products of weight rows with the input: a token's 24 products,
  which read 42 MB, took 1.0 to 1.3 ms against 3.8 for nn.Linear. Products of
  many rows (prompts) run at nn.Linear's speed. Sums may round differently
  from nn.Linear's, within 1e-6 here.

Both take no gradient (inference only) and save their weight as the nn.Linear
they replace, so a prepared model's state_dict loads into a plain GPT.
"""
import contextlib
import threading

import torch
import torch.nn as nn
from torch.nn import functional as F


_onednn_switch = threading.Lock()


class _ThisThread(threading.local):
    onednn_off = False  # whether this thread holds the switch off (within onednn_disabled)


_this_thread = _ThisThread()


@contextlib.contextmanager
def onednn_disabled():
    """Run the block with PyTorch's oneDNN dispatch off, then restore the caller's setting.

    oneDNN carries a fixed cost of several microseconds per call (creating or
    looking up its primitive), which outweighs the work of a one-token op: an
    exact GELU of 1,536 values took 8.6 us through oneDNN and 2.1 us in PyTorch's
    own kernel, and a whole decode step of the 6-layer model took 10% less in
    bf16 and 8% less in fp32 with the switch off. The switch is global: a lock
    keeps overlapping blocks from restoring each other's setting, so blocks in
    different threads (decode steps, one-row products) run one at a time, and
    ops other threads run meanwhile go to PyTorch's kernels instead of oneDNN's.
    Nested blocks in the same thread (a decode step's one-row products) find it
    off already; code within a block must not wait on another thread's block.
    """
    if _this_thread.onednn_off:
        yield
        return
    with _onednn_switch:
        enabled = torch._C._get_mkldnn_enabled()
        try:
            torch._C._set_mkldnn_enabled(False)
            _this_thread.onednn_off = True
            yield
        finally:
            _this_thread.onednn_off = False
            torch._C._set_mkldnn_enabled(enabled)


def can_pack(device, dtype=torch.float32):
    """Whether pack_linears lays out weights for this device (a CPU) and dtype (fp32, or bf16 with oneDNN)."""
    if torch.device(device).type != "cpu":
        return False
    if dtype == torch.float32:
        return True
    return (dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class _InferenceLinear(nn.Module):
    """What the laid-out linears share: no gradient, and a state_dict entry like nn.Linear's."""

    def __init__(self, linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = None if linear.bias is None else linear.bias.detach()

    def _refuse_gradients(self, x):
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError(f"{type(self).__name__} is for inference: its weight takes no gradient")

    def dense_weight(self):
        raise NotImplementedError

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.dense_weight()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class PackedLinear(_InferenceLinear):
    """y = x W^T + b for bf16; optionally GELU(y). W is kept twice: plain, and in oneDNN's blocked layout.

    One row (a token of one sample) goes to PyTorch's own bf16 matrix-vector
    product, which spreads W's rows over the cores and accumulates in fp32; it
    runs only while oneDNN is switched off, since PyTorch hands bf16 products to
    oneDNN whenever it may, and oneDNN runs a one-row product on one core. A
    decode step took 2.06 ms that way against 2.54 ms through the blocked layout.
    The row goes to torch.mv (addmv with a bias), the same kernel as nn.Linear's
    without its reshaping around it (about 10% less time a product). See onednn_disabled
    for the switch. Several rows (prompts, batches of samples) go to oneDNN's
    blocked layout: 4 rows took 0.9 ms against 3.5 ms in PyTorch's product,
    which is only fast for one. The two bf16 copies take the memory of one fp32
    weight.

    `gelu` is None, or GELU's `approximate` ("none" or "tanh"). For several rows
    oneDNN applies GELU to the fp32 sums before rounding them to bf16, which saves
    a separate pass (about 20 us a layer) and one rounding; one row takes GELU of
    the rounded output, a separate call, also with oneDNN off. So bf16 logits of one
    row and of several differ slightly (up to 0.016 over 20 tokens of the 6-layer
    model, logits up to 2).
    """

    def __init__(self, linear, gelu=None):
        super().__init__(linear)
        self.weight = linear.weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, 1)  # oneDNN's hint: inputs of 1 row
        self.gelu = gelu

    def forward(self, x):
        self._refuse_gradients(x)
        if x.numel() == self.in_features:
            return self._one_row(x)
        if self.gelu is None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [None], "")
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "gelu", [None], self.gelu)

    def _one_row(self, x):
        if not _this_thread.onednn_off:  # within a decode step it is off already: skip the switch's cost
            with onednn_disabled():
                return self._one_row(x)
        row = x.reshape(self.in_features)
        y = torch.mv(self.weight, row) if self.bias is None else torch.addmv(self.bias, self.weight, row)
        if self.gelu is not None:
            y = F.gelu(y, approximate=self.gelu)
        return y.view(*x.shape[:-1], self.out_features)

    def dense_weight(self):
        return self.weight

    def extra_repr(self):
        return super().extra_repr() + ("" if self.gelu is None else f", gelu={self.gelu!r}")


class SplitLinear(_InferenceLinear):
    """y = x W^T + b, with W (out, in) seen as two halves of its rows, (2, out / 2, in).

    The halves are a view of the weight, no copy. The product is bmm(halves, x^T):
    each output is a dot product of a contiguous weight row with x, which streams
    the weight; the other order, bmm(x, halves^T), ran at half the speed for one row.
    Inputs of more than FEW_ROWS rows use nn.Linear's product on the whole weight:
    a 256-token forward pass took about 10% longer through the halves.
    """

    FEW_ROWS = 32

    def __init__(self, linear):
        super().__init__(linear)
        out, inp = linear.out_features, linear.in_features
        self.halves = linear.weight.detach().view(2, out // 2, inp)
        if self.bias is not None:
            self.bias_halves = self.bias.view(2, out // 2, 1)

    def forward(self, x):
        self._refuse_gradients(x)
        rows = x.shape[:-1]
        if x.numel() > self.FEW_ROWS * self.in_features:  # a prompt: nn.Linear's product is as fast, with no copy
            return F.linear(x, self.dense_weight(), self.bias)
        xt = x.reshape(-1, self.in_features).t().expand(2, -1, -1)  # (2, in, M): both halves see every row
        if self.bias is None:
            y = torch.bmm(self.halves, xt)  # (2, out/2, M), one half per core
        else:
            y = torch.baddbmm(self.bias_halves, self.halves, xt)
        return y.permute(2, 0, 1).reshape(*rows, self.out_features)  # a view for one row; halves side by side

    def dense_weight(self):
        return self.halves.reshape(self.out_features, self.in_features)


def pack_linears(model):
    """Replace the nn.Linear layers of a CPU model in place by ones laid out for generation; returns the model.

    bf16 layers become PackedLinear, fp32 layers with an even number of outputs
    SplitLinear; one with an odd number (a 65-character or GPT-2's 50,257-token
    output head) stays an nn.Linear. In bf16, each MLP's GELU (model.MLP: c_fc,
    then gelu) moves into its c_fc layer, and the gelu layer becomes an identity.
    Call it last, after any .to(dtype) or change of weights: the laid-out weights
    follow neither (prepare a fresh model instead).
    Elsewhere (CUDA, MPS, fp16, bf16 without oneDNN) the model is returned unchanged.
    """
    weight = next(model.parameters(), None)
    if weight is None or not can_pack(weight.device, weight.dtype):
        return model
    for module in list(model.modules()):
        gelu, c_fc = getattr(module, "gelu", None), getattr(module, "c_fc", None)
        if weight.dtype == torch.bfloat16 and isinstance(gelu, nn.GELU) and type(c_fc) is nn.Linear:
            module.c_fc = PackedLinear(c_fc, gelu=gelu.approximate)
            module.gelu = nn.Identity()
        for name, child in module.named_children():
            if type(child) is not nn.Linear:
                continue
            if weight.dtype == torch.bfloat16:
                setattr(module, name, PackedLinear(child))
            elif child.out_features % 2 == 0:
                setattr(module, name, SplitLinear(child))
    return model
