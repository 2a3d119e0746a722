"""Generation speed with and without the KV cache, measured in one run.

    python benchmarks/sampling.py                 # 6 layers, 384 wide, context 256: 500 new tokens
    python benchmarks/sampling.py --process       # also time whole `python sample.py` processes

Weights are random: speed does not depend on them. The two paths alternate, so
a noisy machine slows both alike, and the ratio is what to compare.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from checkpoint import save_checkpoint  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from sampling import generate_tokens  # noqa: E402
from tokenizer import CharTokenizer  # noqa: E402


# Tiny Shakespeare's 65 characters, so sample.py's default prompt (a newline) is in the vocabulary.
SHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def tokens_per_second(model, new_tokens, use_cache):
    prompt = torch.zeros(1, 1, dtype=torch.long)
    t0 = time.perf_counter()
    for _ in generate_tokens(model, prompt, new_tokens, temperature=0.8, top_k=200, use_cache=use_cache,
                             generator=torch.Generator().manual_seed(0)):
        pass
    return new_tokens / (time.perf_counter() - t0)


def time_processes(model, tokenizer, new_tokens, repeats):
    """Wall time of whole `sample.py` runs (start-up, loading, generation), cached and not."""
    with tempfile.TemporaryDirectory() as out_dir:
        save_checkpoint({"model": model.state_dict(), "model_config": asdict(model.config),
                         "tokenizer": tokenizer.to_meta()}, os.path.join(out_dir, "ckpt.pt"))
        times = {"cache": [], "no cache": []}
        for _ in range(repeats):
            for name, flags in (("cache", []), ("no cache", ["--no_cache"])):
                cmd = [sys.executable, os.path.join(ROOT, "sample.py"), f"--out_dir={out_dir}", "--num_samples=1",
                       f"--max_new_tokens={new_tokens}", "--device=cpu", *flags]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                times[name].append(time.perf_counter() - t0)
        return {k: statistics.median(v) for k, v in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new_tokens", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n_layer", type=int, default=6)
    p.add_argument("--n_embd", type=int, default=384)
    p.add_argument("--n_head", type=int, default=6)
    p.add_argument("--block_size", type=int, default=256)
    p.add_argument("--process", action="store_true", help="also time whole sample.py processes")
    args = p.parse_args()
    tokenizer = CharTokenizer.from_text(SHAKESPEARE_CHARS)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=args.n_layer, n_head=args.n_head,
                       n_embd=args.n_embd, block_size=args.block_size)
    model = GPT(config).eval()
    print(f"{model.num_params() / 1e6:.1f}M parameters, context {args.block_size}, {args.new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads")
    tokens_per_second(model, 20, True)  # warm up kernels and allocator
    results = {"cache": [], "no cache": []}
    for _ in range(args.repeats):
        results["cache"].append(tokens_per_second(model, args.new_tokens, True))
        results["no cache"].append(tokens_per_second(model, args.new_tokens, False))
    cached, plain = statistics.median(results["cache"]), statistics.median(results["no cache"])
    print(f"with KV cache:    {cached:8.1f} new tokens/s")
    print(f"without (recompute the context): {plain:8.1f} new tokens/s")
    print(f"speed-up: {cached / plain:.1f}x")
    if args.process:
        wall = time_processes(model, tokenizer, args.new_tokens, args.repeats)
        print(f"python sample.py --max_new_tokens {args.new_tokens}: {wall['cache']:.2f}s with the cache, "
              f"{wall['no cache']:.2f}s with --no_cache ({wall['no cache'] / wall['cache']:.1f}x)")


if __name__ == "__main__":
    main()
