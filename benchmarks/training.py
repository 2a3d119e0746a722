"""Training-step speed for a config: median ms/iter, tokens/s and MFU, and a ratio against another path.

    python benchmarks/training.py config/shakespeare_char_cpu.py --compare=adamw
    python benchmarks/training.py config/reference_cpu.py --compare=fp32
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/training.py config/shakespeare_char_cpu.py --compare=adamw

A step is train.optimizer_step, the same code training runs: forward, backward,
gradient clipping and the optimizer, on random tokens (batch sampling is left
out). --compare=fp32 also times the plain fp32 eager path, --compare=adamw the
same model with optimizer=adamw; the two paths alternate in one run and their
ratio is printed, since a noisy machine slows both alike. The environment
variables above make PyTorch run as on a CPU without bf16 instructions.
"""
import argparse
import os
import statistics
import sys
import time
from dataclasses import replace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import autocast, mfu, peak_flops, pick_device, pick_dtype, synchronize  # noqa: E402
from model import build_model  # noqa: E402
from optim import build_optimizer  # noqa: E402
from settings import load_settings  # noqa: E402
from train import optimizer_step  # noqa: E402


class Path:
    """One way of running a training step: a model, its optimizer and a precision."""

    def __init__(self, name, model_cfg, cfg, device, dtype):
        torch.manual_seed(cfg.seed)
        self.name, self.device, self.dtype = name, device, dtype
        self.model = build_model(model_cfg).to(device)
        self.optimizer = build_optimizer(self.model, cfg)
        self.compiled = cfg.compiles(device)
        self.step_model = torch.compile(self.model) if self.compiled else self.model
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.ctx = autocast(device, dtype)
        self.grad_clip = cfg.grad_clip
        shape = (cfg.batch_size, model_cfg.block_size)
        self.micro = [(torch.randint(0, model_cfg.vocab_size, shape, device=device),
                       torch.randint(0, model_cfg.vocab_size, shape, device=device))
                      for _ in range(cfg.gradient_accumulation_steps)]
        self.times = []

    def step(self):
        synchronize(self.device)
        t0 = time.perf_counter()
        optimizer_step(self.step_model, self.optimizer, self.micro, self.ctx, self.scaler, self.grad_clip)
        synchronize(self.device)
        return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=20, help="timed steps per path")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--compare", choices=("fp32", "adamw"), help="also time fp32 eager, or optimizer=adamw")
    args, rest = p.parse_known_args()
    cfg, model_cfg = load_settings(rest)
    model_cfg = replace(model_cfg, vocab_size=65)  # Tiny Shakespeare's characters
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    paths = [Path("default", model_cfg, cfg, device, dtype)]
    if args.compare == "fp32":
        paths.append(Path("fp32 eager", model_cfg, replace(cfg, compile="false"), device, torch.float32))
    elif args.compare == "adamw":
        paths.append(Path("adamw", model_cfg, replace(cfg, optimizer="adamw"), device, dtype))
    tokens = cfg.batch_size * model_cfg.block_size * cfg.gradient_accumulation_steps
    print(f"{paths[0].model.num_params():,} parameters, {tokens:,} tokens per step, device {device}, "
          f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    for path in paths:
        for _ in range(args.warmup):
            path.step()
    for _ in range(args.iters):
        for path in paths:  # alternate, so drifts in machine speed hit every path alike
            path.times.append(path.step())
    flops_tok = paths[0].model.flops_per_token()
    ms = {}
    for path in paths:
        ms[path.name] = statistics.median(path.times) * 1000
        tok_s = tokens / (ms[path.name] / 1000)
        util = mfu(tok_s, flops_tok, peak_flops(device, path.dtype))
        label = (f"{path.name} ({str(path.dtype).removeprefix('torch.')}, {type(path.optimizer).__name__}"
                 f"{', compiled' if path.compiled else ''})")
        print(f"{label:<44} {ms[path.name]:8.1f} ms/iter {tok_s:10,.0f} tok/s"
              f"{f'   MFU {100 * util:.1f}% of this device' if util is not None else ''}")
    if args.compare:
        other = paths[1].name
        print(f"default / {other}: {ms['default'] / ms[other]:.2f} of the time")


if __name__ == "__main__":
    main()
