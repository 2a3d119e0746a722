"""Linear layers whose weights are laid out once for fast products on a CPU, for generation.

Generating a token multiplies one row by every weight matrix: 25 products per
token for the 6-layer model, each reading its whole weight. PyTorch's plain
nn.Linear is slow at that on a CPU, differently in each precision:

- bf16: oneDNN copies a plain (out, in) weight into its own blocked layout on
  every call. PackedLinear lays it out once: a token's products took 1.0 ms
  instead of 2.1 on a 2-core Zen 4 (10.7M parameters), bit for bit the same.
  It also applies each MLP's GELU within its first product's call.
- fp32: MKL's matrix-vector product runs on one core, and oneDNN's packed one
  carries about 15 us of fixed cost per call. SplitLinear keeps the weight as
  two halves of output columns, so MKL's batched product runs one half on each
  core: 33 us against 55 (packed) for a 1152 x 384 weight, 11 against 27 for
  384 x 384, and 2.45 ms against 2.7 for a token's 24 products, which stream
  42 MB from memory. Products of many rows (prompts) run at nn.Linear's speed,
  about 18% slower than packed; keeping both layouts would double the memory.
  Sums may round differently from nn.Linear's, within 1e-6 here.

Both take no gradient (inference only) and save their weight as the nn.Linear
they replace, so a prepared model's state_dict loads into a plain GPT.
"""
import torch
import torch.nn as nn


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
    """y = x W^T + b, with W stored in oneDNN's blocked layout; optionally GELU(y), in the same call.

    `gelu` is None, or GELU's `approximate` ("none" or "tanh"): oneDNN then applies
    GELU to the fp32 sums before rounding them to bf16, which saves a separate
    pass (the separate call cost about 20 us a layer) and one rounding.
    """

    def __init__(self, linear, gelu=None):
        super().__init__(linear)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)  # laid out for 1-row inputs
        self.gelu = gelu

    def forward(self, x):
        self._refuse_gradients(x)
        if self.gelu is None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [None], "")
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "gelu", [None], self.gelu)

    def dense_weight(self):
        return self.packed.to_dense()

    def extra_repr(self):
        return super().extra_repr() + ("" if self.gelu is None else f", gelu={self.gelu!r}")


class SplitLinear(_InferenceLinear):
    """y = x W^T + b, with W^T stored as two halves of its output columns, (2, in, out / 2)."""

    def __init__(self, linear):
        super().__init__(linear)
        out, inp = linear.out_features, linear.in_features
        self.halves = linear.weight.detach().reshape(2, out // 2, inp).transpose(1, 2).contiguous()  # (2, in, out/2)
        if self.bias is not None:
            self.bias_halves = self.bias.view(2, 1, out // 2)

    def forward(self, x):
        self._refuse_gradients(x)
        rows = x.shape[:-1]
        x = x.reshape(1, -1, self.in_features).expand(2, -1, -1)  # (2, M, in): every row meets both halves
        if self.bias is None:
            y = torch.bmm(x, self.halves)  # (2, M, out/2), one half per core
        else:
            y = torch.baddbmm(self.bias_halves, x, self.halves)
        return y.transpose(0, 1).reshape(*rows, self.out_features)  # halves side by side again

    def dense_weight(self):
        return self.halves.transpose(1, 2).reshape(self.out_features, self.in_features)


def pack_linears(model):
    """Replace the nn.Linear layers of a CPU model in place by ones laid out for generation; returns the model.

    bf16 layers become PackedLinear, fp32 layers with an even number of outputs
    SplitLinear; one with an odd number (a 65-character or GPT-2's 50,257-token
    output head) stays an nn.Linear. In bf16, each MLP's GELU (model.MLP: c_fc,
    then gelu) moves into its c_fc product, and the gelu layer becomes an identity.
    Call it last, after any .to(dtype): the laid-out weights do not follow .to().
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
