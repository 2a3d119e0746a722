"""The optimizer a run trains with: AdamW, or Muon for the blocks' matrices with AdamW for the rest.

Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers") replaces each
weight matrix's momentum by the nearest orthogonal matrix, found with a few
Newton-Schulz iterations, so every direction of the update moves at the same
rate. It suits the matrices inside the blocks; embeddings, the output head and
the LayerNorm gains stay with AdamW, as in the paper's recipe.
"""
import torch

from common import UserError, native_bf16

# AdamW as one fused kernel on the devices PyTorch has it for: about a third of the
# per-list kernels' time for the GPU recipe's 10.7M parameters on two CPU cores.
FUSED_ADAMW_DEVICES = ("cuda", "cpu", "mps")


def orthogonalize(g, steps=5, dtype=torch.float32):
    """Approximately U V^T for the SVD g = U S V^T: g with every singular value set to 1.

    Newton-Schulz iterations of the quintic x -> a x + b (x x^T) x + c (x x^T)^2 x,
    whose coefficients (Jordan et al.) push singular values in (0, 1] towards 1
    quickly; five steps leave them between about 0.7 and 1.2, which serves as well.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T  # so that x x^T is the smaller of the two Gram matrices
    x = x / x.norm().clamp(min=1e-7)  # the Frobenius norm bounds the largest singular value: now at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)  # a x + (b G + c G^2) x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """SGD with Nesterov momentum, each matrix's update orthogonalized (see orthogonalize).

    `ns_dtype` is the precision of the Newton-Schulz iterations: bf16 is enough for
    them, and is what to use where the device multiplies bf16 in hardware; elsewhere
    bf16 is emulated and fp32 is many times faster (build_optimizer chooses).
    """

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, weight_decay=0.0,
                 ns_dtype=torch.float32):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                                      weight_decay=weight_decay))
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
                momentum = self.state[p]["momentum_buffer"]
                momentum.lerp_(p.grad, 1 - group["momentum"])  # m = beta m + (1 - beta) g
                update = p.grad.lerp(momentum, group["momentum"]) if group["nesterov"] else momentum
                update = orthogonalize(update, group["ns_steps"], self.ns_dtype)
                rows, cols = p.shape
                # An orthogonal update's entries shrink as the matrix widens; scaling by
                # sqrt(rows / cols) for tall matrices keeps their size (the paper's rule).
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-group["lr"] * max(1.0, rows / cols) ** 0.5)


class OptimizerSet:
    """Several optimizers stepped as one; to train.py it looks like a single optimizer.

    Each parameter group carries `lr_scale`: the schedule sets group lr to
    schedule(step) * lr_scale, so every optimizer follows the same warmup and decay.
    """

    def __init__(self, **optimizers):
        self.optimizers = optimizers

    @property
    def param_groups(self):
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def step(self):
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none=True):
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state):
        if not isinstance(state, dict) or set(state) != set(self.optimizers):
            raise ValueError(f"it holds the state of other optimizers than {' + '.join(self.optimizers)}; "
                             "resume with the optimizer setting the run was started with")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def build_optimizer(model, cfg):
    """The optimizer cfg.optimizer names, for model's trainable parameters (on their device)."""
    betas = (cfg.beta1, cfg.beta2)
    device = next(model.parameters()).device
    fused = device.type in FUSED_ADAMW_DEVICES or None
    if cfg.optimizer == "adamw":
        optimizer = model.configure_optimizer(cfg.learning_rate, cfg.weight_decay, betas, fused=fused)
        for group in optimizer.param_groups:
            group["lr_scale"] = 1.0
        return optimizer
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    matrices = [p for n, p in named if p.dim() == 2 and n.startswith("blocks.")]
    if not matrices:
        raise UserError("optimizer='muon' trains the matrices inside Transformer blocks, and this model has none; "
                        "use optimizer='adamw'")
    in_muon = {id(p) for p in matrices}
    rest = [p for n, p in named if id(p) not in in_muon]
    adamw = torch.optim.AdamW(
        [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay},
         {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}],
        lr=cfg.learning_rate, betas=betas, fused=fused)
    # No weight decay: Muon's steps are ~50x AdamW's (0.02 against ~4e-4 here), and
    # decay is applied as lr * weight_decay, so 0.1 would shrink the matrices quickly.
    muon = Muon(matrices, lr=cfg.muon_learning_rate, momentum=0.95,
                ns_dtype=torch.bfloat16 if native_bf16(device) else torch.float32)
    for group in adamw.param_groups:
        group["lr_scale"] = 1.0
    for group in muon.param_groups:
        group["lr_scale"] = cfg.muon_learning_rate / cfg.learning_rate
    return OptimizerSet(adamw=adamw, muon=muon)
