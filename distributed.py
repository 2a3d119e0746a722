"""Data-parallel training across processes and machines, through torchrun.

    torchrun --standalone --nproc_per_node=4 train.py config/shakespeare_char.py
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=10.0.0.1 --master_port=29500 train.py ...

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them training is a single
process and nothing here does anything. Every process holds a whole model (DDP),
draws its own batches, and gradients are averaged across processes before each
optimizer step, so N processes take the same steps as one with N times the batch.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from device import pick_device
from errors import UserError


@dataclass
class Distributed:
    """This process's place in the job, and the few collective operations training needs."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = None  # set under torchrun: each process owns one GPU, or the CPU
    _model: DDP = None

    @property
    def enabled(self):
        return self.world_size > 1 or dist.is_initialized()

    def wrap(self, model):
        if not self.enabled:
            return model
        # DDP copies rank 0's weights to every rank here, so all start from the same model.
        ids = [self.device.index] if self.device.type == "cuda" else None
        self._model = DDP(model, device_ids=ids)
        return self._model

    def sync(self, on):
        """Let DDP all-reduce gradients in the coming backward pass, or not (accumulation steps)."""
        if self._model is not None:
            self._model.require_backward_grad_sync = on

    def mean(self, value):
        """The mean of a tensor over all ranks (each rank's loss -> the step's loss)."""
        if not self.enabled:
            return value
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.world_size

    def gather(self, obj):
        """[obj of rank 0, obj of rank 1, ...], on every rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def cleanup(self):
        if dist.is_initialized():
            # Every rank arrives before any tears its connections down. Without this, a
            # rank that finished first (rank 0 was still writing its files) sometimes
            # aborted at exit under gloo: 'terminate called without an active exception'.
            dist.barrier()
            dist.destroy_process_group()


def lost_peer(error):
    """True for the error a process gets in a collective when another process of the job has died.

    gloo reports it as a RuntimeError ("Connection closed by peer"), NCCL as a DistError.
    """
    return dist.is_available() and dist.is_initialized() and (isinstance(error, dist.DistError)
                                                              or "by peer" in str(error))


def setup(cfg):
    """Join the process group when launched by torchrun; a single process otherwise.

    gradient_accumulation_steps is global: each of the N processes does 1/N of
    the micro-steps, so the tokens per optimizer step do not depend on N.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Distributed()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cfg.gradient_accumulation_steps % world != 0:
        raise UserError(f"gradient_accumulation_steps {cfg.gradient_accumulation_steps} must be a multiple of "
                        f"the number of processes ({world}); each process does an equal share of the micro-steps")
    device = pick_device(cfg.device)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                            "use --nproc_per_node at most the number of GPUs")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UserError(f"distributed training needs cuda or cpu, not {device.type}")
    dist.init_process_group(backend=backend, rank=rank, world_size=world,
                            device_id=device if backend == "nccl" else None)
    return Distributed(rank=rank, local_rank=local_rank, world_size=world, device=device)
