"""How the weights are updated: AdamW, or Muon for the blocks' matrices with AdamW for the rest,
by one process or by the processes of a torchrun job.

Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers") replaces each
weight matrix's momentum by the nearest orthogonal matrix, found with a few
Newton-Schulz iterations, so every direction of the update moves at the same
rate. It suits the matrices inside the blocks; embeddings, the output head and
the LayerNorm gains stay with AdamW, as in the paper's recipe.

Under torchrun each process holds the whole model in DistributedDataParallel,
which averages the gradients across processes before each step (Distributed).
"""
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from common import UserError, native_bf16, pick_device

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
    adamw = model.configure_optimizer(cfg.learning_rate, cfg.weight_decay, betas, fused=fused,
                                      params=[p for n, p in named if id(p) not in in_muon])
    # No weight decay: Muon's steps are ~50x AdamW's (0.02 against ~4e-4 here), and
    # decay is applied as lr * weight_decay, so 0.1 would shrink the matrices quickly.
    muon = Muon(matrices, lr=cfg.muon_learning_rate, momentum=0.95,
                ns_dtype=torch.bfloat16 if native_bf16(device) else torch.float32)
    for group in adamw.param_groups:
        group["lr_scale"] = 1.0
    for group in muon.param_groups:
        group["lr_scale"] = cfg.muon_learning_rate / cfg.learning_rate
    return OptimizerSet(adamw=adamw, muon=muon)


# --------------------------------------------------------------------------- processes under torchrun

# Rank 0 alone writes checkpoints (fsynced) while the other ranks wait in the next
# step's all-reduce. NCCL's default timeout, 10 minutes, is too short for a large
# model's checkpoint on a slow disk; a hung job still ends, an hour later.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)


@dataclass
class Distributed:
    """This process's place in a torchrun job, and the few collective operations training needs.

    Without torchrun it is one process, and every method does nothing.
    """
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = None  # set under torchrun: each process owns one GPU, or the CPU
    ddp_model: DDP = None

    @property
    def enabled(self):
        return dist.is_initialized()

    def wrap(self, model):
        """The model in DistributedDataParallel, which averages gradients across processes."""
        if not self.enabled:
            return model
        # DDP copies rank 0's weights to every rank here, so all start from the same model.
        # The only buffer (the sinusoidal table) is constant: broadcasting it before every
        # forward pass would put a collective into evaluation, which each rank runs alone.
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp_model = DDP(model, device_ids=ids, broadcast_buffers=False)
        return self.ddp_model

    def sync(self, on):
        """Let DDP all-reduce gradients in the coming backward pass, or not (accumulation steps)."""
        if self.ddp_model is not None:
            self.ddp_model.require_backward_grad_sync = on

    def sum(self, tensor):
        """The sum of a tensor over all ranks, on every rank."""
        if self.enabled:
            tensor = tensor.detach().clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def mean(self, tensor):
        return self.sum(tensor) / self.world_size

    def gather(self, obj):
        """[obj of rank 0, obj of rank 1, ...], on every rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def cleanup(self):
        if self.enabled:
            # Every rank arrives before any tears its connections down. Without this, a
            # rank that finished first sometimes aborted at exit under gloo.
            dist.barrier()
            dist.destroy_process_group()


def lost_peer(error):
    """True for the error a process gets in a collective when another process of the job has died.

    gloo reports it as a RuntimeError ("Connection closed by peer"), NCCL as a DistError.
    """
    return dist.is_available() and dist.is_initialized() and (isinstance(error, dist.DistError)
                                                              or "by peer" in str(error))


def process_device(device, local_rank):
    """The GPU a torchrun process takes: its LOCAL_RANK's, or the one GPU a launcher showed it.

    Launchers such as Slurm or Kubernetes often show each process a single GPU
    through CUDA_VISIBLE_DEVICES, so LOCAL_RANK 3 may own what it sees as cuda:0.
    """
    if device.type != "cuda":
        return device
    visible = torch.cuda.device_count()
    if local_rank < visible:
        return torch.device("cuda", local_rank)
    if visible == 1 and os.environ.get("CUDA_VISIBLE_DEVICES"):
        return torch.device("cuda", 0)
    raise UserError(f"local rank {local_rank} has no GPU of its own ({visible} visible); use "
                    "--nproc_per_node at most the number of GPUs, or show each process one GPU")


def setup_distributed(cfg):
    """Join the process group when launched by torchrun; a single process otherwise.

    gradient_accumulation_steps is global: each of the N processes does 1/N of
    the micro-steps, so the tokens per optimizer step do not depend on N.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Distributed()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if not cfg.eval_only and cfg.gradient_accumulation_steps % world != 0:
        raise UserError(f"gradient_accumulation_steps {cfg.gradient_accumulation_steps} must be a multiple of "
                        f"the number of processes ({world}); each process does an equal share of the micro-steps")
    device = process_device(pick_device(cfg.device), local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UserError(f"distributed training needs cuda or cpu, not {device.type}")
    dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT,
                            device_id=device if backend == "nccl" else None)
    return Distributed(rank=rank, local_rank=local_rank, world_size=world, device=device)
