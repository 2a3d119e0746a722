"""Generate text from a trained checkpoint, printing each token as it is produced.

    python sample.py --start "ROMEO:"
    python sample.py --start FILE:prompt.txt --num_samples 3 --top_p 0.9 --stop "\n\n"
    python sample.py --init_from gpt2 --start "Hello, I'm a language model,"
"""
import argparse
import os
import re
import sys
import time

from checkpoint import check_gpt2_source
from common import UserError, run_main
from generate import load

ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def read_prompt(start):
    """--start text, or the contents of a file given as FILE:path."""
    if not start.startswith("FILE:"):
        return start
    path = start[len("FILE:"):]
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise UserError(f"cannot read prompt file {path}: {e.strerror}") from None


def shell_escapes(text):
    """Text typed on a shell line, with \\n, \\t, \\r and \\\\ read as newline, tab, return and backslash.

    Everything else stays as typed, so any Unicode text (--stop "é", --stop "—") means itself.
    """
    return re.sub(r"\\([ntr\\])", lambda m: ESCAPES[m.group(1)], text)


def parse_args(argv):
    p = argparse.ArgumentParser(description="Sample text from a trained GPT checkpoint.")
    p.add_argument("--out_dir", default="out-shakespeare-char", help="folder with ckpt.pt, or a checkpoint file")
    p.add_argument("--init_from", help="GPT-2's weights instead of a checkpoint: gpt2, gpt2-medium, gpt2-large, "
                   "gpt2-xl, or a local model.safetensors file or folder")
    p.add_argument("--start", default="\n", help='prompt text, or FILE:path to read it from a file (default: newline)')
    p.add_argument("--num_samples", type=int, default=1, help="samples generated together as one batch")
    p.add_argument("--max_new_tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy: always the most likely token")
    p.add_argument("--top_k", type=int, default=200, help="sample from the k most likely tokens (0: all)")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling: the smallest set reaching p (1: all)")
    p.add_argument("--stop", action="append", default=[], help="end a sample at this string (repeatable)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16: the weights' precision "
                   "(auto: bf16 where the device computes it in hardware, else float16 on GPUs, float32 on CPUs)")
    p.add_argument("--no_cache", action="store_true", help="recompute the whole context for every token")
    args = p.parse_args(argv)
    if args.num_samples < 1 or args.max_new_tokens < 0:
        raise UserError("--num_samples must be at least 1 and --max_new_tokens at least 0")
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        raise UserError("need --temperature >= 0, 0 < --top_p <= 1 and --top_k >= 0")
    if args.init_from is not None:
        check_gpt2_source(args.init_from, "--init_from")
    args.stop = [shell_escapes(s) for s in args.stop]
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    gen = load(args.init_from or args.out_dir, args.device, args.dtype)
    prompt = read_prompt(args.start)
    gen.tokenizer.encode(prompt)  # an unknown character is an error before anything is printed
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None,
                   top_p=args.top_p if args.top_p < 1 else None, stop=args.stop, seed=args.seed,
                   use_cache=not args.no_cache)
    t0 = time.perf_counter()
    if args.num_samples == 1:
        sys.stdout.write(prompt)
        for piece in gen.stream(prompt, **options):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        for i, text in enumerate(gen(prompt, num_samples=args.num_samples, **options)):
            print(text)
            if i < args.num_samples - 1:
                print("-" * 40)
    print(f"[{args.num_samples} x {gen.steps} tokens in {time.perf_counter() - t0:.2f}s]", file=sys.stderr)


if __name__ == "__main__":
    try:
        run_main(main)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader stopped early (python sample.py | head): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit has nowhere to fail
        sys.exit(1)
