"""Generation speed with and without the KV cache, measured in one run.

    python benchmarks/sampling.py                 # 6 layers, 384 wide, context 256: 500 new tokens
    python benchmarks/sampling.py --process       # also time whole `python sample.py` processes

Weights are random: speed does not depend on them. The paths alternate, so a
noisy machine slows them alike, and the ratios are what to compare. --process
times `sample.py` as shipped (KV cache, automatic precision) against
`sample.py --no_cache --dtype float32`, the way a generator without a cache
works: the whole context recomputed in fp32 for every token.
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
from common import pick_dtype  # noqa: E402
from model import generate_tokens  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
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
    """Median wall time of whole `sample.py` runs (start-up, loading, generation), as shipped and as without a cache."""
    with tempfile.TemporaryDirectory() as out_dir:
        save_checkpoint({"model": model.state_dict(), "model_config": asdict(model.config),
                         "tokenizer": tokenizer.to_meta()}, os.path.join(out_dir, "ckpt.pt"))
        runs = {"sample.py": [], "sample.py --no_cache --dtype float32": ["--no_cache", "--dtype=float32"]}
        times = {name: [] for name in runs}
        for _ in range(repeats):
            for name, flags in runs.items():
                cmd = [sys.executable, os.path.join(ROOT, "sample.py"), f"--out_dir={out_dir}", "--num_samples=1",
                       f"--max_new_tokens={new_tokens}", "--device=cpu", *flags]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                times[name].append(time.perf_counter() - t0)
        return {name: statistics.median(t) for name, t in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new_tokens", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n_layer", type=int, default=6)
    p.add_argument("--n_embd", type=int, default=384)
    p.add_argument("--n_head", type=int, default=6)
    p.add_argument("--block_size", type=int, default=256)
    p.add_argument("--bias", type=int, default=0, help="1 for biases in Linear and LayerNorm (the recipes have none)")
    p.add_argument("--process", action="store_true", help="also time whole sample.py processes")
    args = p.parse_args()
    tokenizer = CharTokenizer.from_text(SHAKESPEARE_CHARS)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=args.n_layer, n_head=args.n_head,
                       n_embd=args.n_embd, block_size=args.block_size, bias=bool(args.bias))
    model = GPT(config).eval()
    auto = pick_dtype("auto", torch.device("cpu"))
    dtypes = [torch.float32] + ([auto] if auto != torch.float32 else [])
    models = {dtype: GPT(config).to(dtype).eval() for dtype in dtypes}  # as generate.load prepares it
    for m in models.values():
        m.load_state_dict(model.state_dict())
    print(f"{model.num_params() / 1e6:.1f}M parameters, context {args.block_size}, {args.new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    results = {(dtype, cache): [] for dtype in dtypes for cache in (True, False)}
    for m in models.values():
        tokens_per_second(m, 20, True)  # warm up kernels and allocator
    for _ in range(args.repeats):
        for dtype, cache in results:
            results[dtype, cache].append(tokens_per_second(models[dtype], args.new_tokens, cache))
    rate = {key: statistics.median(r) for key, r in results.items()}
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        print(f"{name:<9} with KV cache {rate[dtype, True]:7.1f} new tokens/s, recomputing the context "
              f"{rate[dtype, False]:6.1f}: {rate[dtype, True] / rate[dtype, False]:.1f}x")
    if auto != torch.float32:
        print(f"{str(auto).removeprefix('torch.')} with the cache / float32 recomputing: "
              f"{rate[auto, True] / rate[torch.float32, False]:.1f}x")
    if args.process:
        wall = time_processes(model, tokenizer, args.new_tokens, args.repeats)
        (fast, t_fast), (slow, t_slow) = wall.items()
        print(f"{fast}: {t_fast:.2f}s; {slow}: {t_slow:.2f}s ({t_fast / t_slow:.2f} of the time, "
              f"{args.new_tokens} new tokens, whole processes)")


if __name__ == "__main__":
    main()
