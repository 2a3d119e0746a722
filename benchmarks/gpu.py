"""The GPU recipe on one CUDA GPU, measured in one command: speed, memory, time to a val loss, exact resume.

    python prepare.py && python benchmarks/gpu.py
    python benchmarks/gpu.py --max_iters=2000 --target=1.6      # a shorter look

Trains config/shakespeare_char.py compiled and not compiled, each to max_iters,
and prints for each: median ms/iter, MFU, peak GPU memory, and the step and
seconds at which the estimated val loss first reached --target. Then it trains
--resume_steps steps in one go, and the same steps stopped halfway and resumed
with --init_from=resume, and prints the largest difference between the two
runs' losses after the stop: CUDA kernels that add with atomics round
differently from run to run, so the check allows 1e-3, not exact equality (run
train.py with --deterministic=true for that).
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import train  # noqa: E402
from eval import current_records, read_metrics  # noqa: E402
from settings import load_settings  # noqa: E402

RECIPE = os.path.join(ROOT, "config", "shakespeare_char.py")


def run(out_dir, *overrides):
    """train.py's training in this process; returns (metrics records, peak GPU memory in bytes)."""
    torch.cuda.reset_peak_memory_stats()
    cfg, model_cfg = load_settings([RECIPE, f"--out_dir={out_dir}", "--device=cuda", *overrides])
    train.train(cfg, model_cfg)
    return current_records(read_metrics(os.path.join(out_dir, "metrics.jsonl"))), torch.cuda.max_memory_allocated()


def summary(name, records, peak_bytes, target):
    steps = [r for r in records if r["kind"] == "train"][1:]  # the first interval holds compilation
    ms = statistics.median(r["ms_per_iter"] for r in steps)
    mfu = statistics.median(r["mfu"] for r in steps if r["mfu"] is not None) if steps[0]["mfu"] is not None else None
    reached = next((r for r in records if r["kind"] == "eval" and r["val_loss"] <= target), None)
    best = min(r["val_loss"] for r in records if r["kind"] == "eval")
    when = f"step {reached['iter']} at {reached['elapsed']:.0f} s" if reached else "not reached"
    print(f"{name:<13} {ms:7.2f} ms/iter  MFU {'n/a' if mfu is None else f'{100 * mfu:.1f}%'}  "
          f"peak memory {peak_bytes / 2**30:.2f} GiB  val {target} {when}  best val {best:.4f}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max_iters", type=int, default=5000)
    p.add_argument("--target", type=float, default=1.47, help="the val loss whose step and time are reported")
    p.add_argument("--resume_steps", type=int, default=400, help="steps of the resume check (stopped halfway)")
    p.add_argument("--data_root", default=os.path.join(ROOT, "data"))
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA GPU")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    work = tempfile.mkdtemp(prefix="gpu-bench-")
    try:
        common = [f"--data_root={args.data_root}", f"--max_iters={args.max_iters}",
                  f"--lr_decay_iters={args.max_iters}"]
        for compiled in ("true", "false"):
            records, peak = run(os.path.join(work, f"compile-{compiled}"), *common, f"--compile={compiled}")
            summary(f"compile={compiled}", records, peak, args.target)

        n, half = args.resume_steps, args.resume_steps // 2
        check = [f"--data_root={args.data_root}", f"--lr_decay_iters={n}", "--log_interval=1",
                 f"--eval_interval={half}", f"--checkpoint_interval={half}", "--eval_iters=20"]
        whole, _ = run(os.path.join(work, "whole"), *check, f"--max_iters={n}")
        stopped = os.path.join(work, "stopped")
        run(stopped, *check, f"--max_iters={half}")
        resumed, _ = run(stopped, *check, f"--max_iters={n}", "--init_from=resume")
        losses = [{r["iter"]: r["loss"] for r in records if r["kind"] == "train" and r["iter"] > half}
                  for records in (whole, resumed)]
        worst = max(abs(losses[0][i] - losses[1][i]) for i in losses[0])
        print(f"resume: steps {half + 1}-{n} after a stop at {half}: largest loss difference {worst:.2e} "
              f"({'within' if worst <= 1e-3 else 'NOT within'} 1e-3)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
