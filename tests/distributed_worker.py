"""What each process runs under torchrun in tests/test_distributed.py.

    torchrun --standalone --nproc_per_node=2 tests/distributed_worker.py step OUT.pt K
    torchrun --standalone --nproc_per_node=2 tests/distributed_worker.py fail TRAIN_ARGS...
    torchrun --standalone --nproc_per_node=2 tests/distributed_worker.py bad_rank TRAIN_ARGS...

step: one optimizer step of train.optimizer_step on the DDP model, each rank feeding
its K of the 2K micro-batches that `fixed_batches` makes; rank 0 saves the weights.
fail: train.py, where rank 1 raises a RuntimeError in its third step.
bad_rank: train.py, where rank 1 alone is given a dataset that does not exist.
"""
import contextlib
import os
import sys
from types import SimpleNamespace

import torch
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

import optim
import train
from common import run_main
from model import GPTConfig, build_model

CONFIG = GPTConfig(vocab_size=35, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


def fixed_batches(n, batch_size=4):
    """The same n (x, y) micro-batches in every process."""
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(CONFIG.vocab_size, (n, batch_size, CONFIG.block_size + 1), generator=gen)
    return [(t[:, :-1], t[:, 1:]) for t in tokens]


def fresh_model_and_optimizer():
    torch.manual_seed(0)
    model = build_model(CONFIG)
    # Plain SGD: its update is the gradient itself, so a wrongly scaled gradient shows (Adam would hide it).
    return model, torch.optim.SGD(model.parameters(), lr=0.5)


def one_step(k, out_path):
    ddp = optim.setup_distributed(SimpleNamespace(gradient_accumulation_steps=2 * k, device="cpu", eval_only=False))
    model, optimizer = fresh_model_and_optimizer()
    ddp_model = ddp.wrap(model)
    all_reduces = []

    def counting_allreduce(state, bucket):  # DDP's own all-reduce, counted
        all_reduces.append(1)
        return allreduce_hook(None, bucket)

    ddp_model.register_comm_hook(None, counting_allreduce)
    mine = fixed_batches(2 * k)[ddp.rank * k:(ddp.rank + 1) * k]
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = ddp.mean(train.optimizer_step(ddp_model, optimizer, mine, contextlib.nullcontext(), scaler, 0.0, ddp.sync))
    if ddp.rank == 0:
        torch.save({"model": model.state_dict(), "loss": loss, "all_reduces": len(all_reduces)}, out_path)
    ddp.cleanup()


def failing_train(argv):
    real_step, calls = train.optimizer_step, []

    def step(*args, **kwargs):
        calls.append(1)
        if os.environ["RANK"] == "1" and len(calls) == 3:
            raise RuntimeError("rank 1 fails in its third step")
        return real_step(*args, **kwargs)

    train.optimizer_step = step
    run_main(lambda: train.main(argv))


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "step":
        one_step(int(args[1]), args[0])
    elif mode == "fail":
        failing_train(args)
    elif mode == "bad_rank":
        run_main(lambda: train.main(args + (["--dataset=missing"] if os.environ["RANK"] == "1" else [])))
