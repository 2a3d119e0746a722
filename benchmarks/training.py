"""Training-step speed for a config: median ms/iter, tokens/s and MFU.

    python benchmarks/training.py config/shakespeare_char.py --batch_size=8
    python benchmarks/training.py config/reference_cpu.py --compare

A step is train.optimizer_step, the same code training runs: forward, backward,
gradient clipping and AdamW, on random tokens (batch sampling is left out).
--compare times the plain fp32 eager path and the default path in alternation,
in one run, and prints their ratio: a noisy machine slows both alike.
"""
import argparse
import statistics
import sys
import time
from dataclasses import replace
import os

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from device import autocast, pick_device, pick_dtype, synchronize  # noqa: E402
from model import build_model  # noqa: E402
from optimizers import build_optimizer  # noqa: E402
from settings import load_settings  # noqa: E402
from throughput import flops_per_token, mfu, peak_flops  # noqa: E402
from train import optimizer_step  # noqa: E402


class Path:
    """One way of running a training step: a model, its optimizer and a precision."""

    def __init__(self, name, model_cfg, cfg, device, dtype, compile_model):
        torch.manual_seed(cfg.seed)
        self.name, self.device, self.dtype = name, device, dtype
        self.model = build_model(model_cfg).to(device)
        self.optimizer = build_optimizer(self.model, cfg)
        self.step_model = torch.compile(self.model) if compile_model else self.model
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
    p.add_argument("--compare", action="store_true", help="also time plain fp32 eager and print the ratio")
    args, rest = p.parse_known_args()
    cfg, model_cfg = load_settings(rest)
    model_cfg = replace(model_cfg, vocab_size=65)  # Tiny Shakespeare's characters
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    paths = [Path("default", model_cfg, cfg, device, dtype, cfg.compile)]
    if args.compare:
        paths.insert(0, Path("fp32 eager", model_cfg, cfg, device, torch.float32, False))
    tokens = cfg.batch_size * model_cfg.block_size * cfg.gradient_accumulation_steps
    print(f"{paths[0].model.num_params():,} parameters, {tokens:,} tokens per step, device {device}, "
          f"{torch.get_num_threads()} threads")
    for path in paths:
        for _ in range(args.warmup):
            path.step()
    for _ in range(args.iters):
        for path in paths:  # alternate, so drifts in machine speed hit every path alike
            path.times.append(path.step())
    flops_tok = flops_per_token(model_cfg, paths[0].model.num_params())
    results = {}
    for path in paths:
        ms = statistics.median(path.times) * 1000
        tok_s = tokens / (ms / 1000)
        util = mfu(tok_s, flops_tok, peak_flops(device, path.dtype))
        results[path.name] = ms
        label = f"{path.name} ({str(path.dtype).removeprefix('torch.')}{', compiled' if path.step_model is not path.model else ''})"
        print(f"{label:<34} {ms:8.1f} ms/iter {tok_s:10,.0f} tok/s"
              f"{f'   MFU {100 * util:.1f}% of this device' if util is not None else ''}")
    if args.compare:
        print(f"default / fp32 eager: {results['default'] / results['fp32 eager']:.2f} of the time "
              f"({results['fp32 eager'] / results['default']:.2f}x faster)")


if __name__ == "__main__":
    main()
