"""Zero-shot evaluation on HellaSwag (Zellers et al. 2019), scored as GPT-2's results are reported.

    python eval.py hellaswag --init_from gpt2             # OpenAI's GPT-2 (124M): published acc_norm 0.2955
    python eval.py hellaswag --out_dir out-gpt2           # a checkpoint of this project
    python eval.py hellaswag --init_from gpt2 --data path/to/hellaswag_val.jsonl --limit 1000

Each example is a context and four endings, one of them right. The model scores
every ending by the loss of the ending's tokens given the context: the ending of
lowest total loss is its answer for acc, the ending of lowest mean loss per token
for acc_norm (which does not favour short endings). The 10,042 validation
examples are downloaded once into the cache that GPT-2's weights use.
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

from common import UserError, autocast, pick_device, pick_dtype, run_main

HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"


def hellaswag_file(path=None):
    """A local HellaSwag .jsonl: the one given, or the validation set, downloaded once."""
    if path:
        if not os.path.isfile(path):
            raise UserError(f"no HellaSwag file at {path}")
        return path
    from gpt2 import cache_dir
    path = os.path.join(cache_dir(), "hellaswag", "hellaswag_val.jsonl")
    if not os.path.isfile(path):
        from prepare import download
        os.makedirs(os.path.dirname(path), exist_ok=True)
        download(HELLASWAG_URL, path, offline="copy hellaswag_val.jsonl from a machine that has it and pass "
                 "--data PATH")
    return path


def read_examples(path, limit=None):
    """[{'ctx': str, 'endings': [4 str], 'label': int}] from a HellaSwag .jsonl file."""
    examples = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if limit is not None and len(examples) >= limit:
                break
            if not line.strip():
                continue
            try:
                example = json.loads(line.decode("utf-8"))
                texts = [example["ctx"], *example["endings"]]
                if len(texts) != 5 or not all(isinstance(t, str) for t in texts) or example["label"] not in range(4):
                    raise ValueError
                examples.append({k: example[k] for k in ("ctx", "endings", "label")})
            except (ValueError, KeyError, TypeError):  # UnicodeDecodeError is a ValueError
                raise UserError(f"{path}:{number} is not a HellaSwag example (ctx, four endings, a label 0-3)") from None
    return examples


@torch.no_grad()
def ending_losses(model, tokenizer, example, device, ctx):
    """(total loss, mean loss per token) of each of the four endings given the context: two tensors (4,)."""
    context = tokenizer.encode(example["ctx"])
    endings = [tokenizer.encode(" " + ending) for ending in example["endings"]]  # a space joins ending to context
    keep = model.config.block_size + 1  # a row longer than the model's context loses its first tokens
    rows = [(context + ending)[-keep:] for ending in endings]
    T = max(len(row) for row in rows)
    tokens = torch.zeros(4, T, dtype=torch.long)
    scored = torch.zeros(4, T - 1)  # 1 where a prediction is of an ending's token
    for i, (row, ending) in enumerate(zip(rows, endings)):
        tokens[i, :len(row)] = torch.tensor(row)  # padded after the row: never scored
        scored[i, max(len(row) - 1 - len(ending), 0):len(row) - 1] = 1  # an ending longer than the context window: its tail
    tokens, scored = tokens.to(device), scored.to(device)
    with ctx:
        logits, _ = model(tokens[:, :-1])  # (4, T-1, V): position t predicts token t+1
    losses = F.cross_entropy(logits.float().transpose(1, 2), tokens[:, 1:], reduction="none") * scored  # (4, T-1)
    total = losses.sum(dim=1)
    return total, total / scored.sum(dim=1)


def hellaswag(model, tokenizer, examples, device, ctx, report_every=1000):
    """{'acc', 'acc_norm', 'examples'} of the model on the examples."""
    model.eval()
    right = right_norm = 0
    for n, example in enumerate(examples, 1):
        total, mean = ending_losses(model, tokenizer, example, device, ctx)
        right += int(total.argmin()) == example["label"]
        right_norm += int(mean.argmin()) == example["label"]
        if report_every and n % report_every == 0:
            print(f"{n:,} examples: acc {right / n:.4f}, acc_norm {right_norm / n:.4f}", file=sys.stderr)
    return {"acc": right / len(examples), "acc_norm": right_norm / len(examples), "examples": len(examples)}


def load_scored_model(init_from, out_dir, device):
    """(model on device, tokenizer, its name) from GPT-2's weights or a checkpoint."""
    if init_from:
        from gpt2 import load_pretrained
        from prepare import GPT2Tokenizer
        model, tokenizer, name = load_pretrained(init_from), GPT2Tokenizer(), init_from
    else:
        from checkpoint import load_model, resolve_checkpoint
        model, tokenizer, _ = load_model(out_dir)
        name = resolve_checkpoint(out_dir)
    return model.to(device), tokenizer, name


def main(argv=None):
    p = argparse.ArgumentParser(description="Zero-shot evaluation of a model on a benchmark.")
    p.add_argument("benchmark", choices=("hellaswag",))
    p.add_argument("--init_from", help="GPT-2's weights: gpt2 ... gpt2-xl, or a local model.safetensors file or folder")
    p.add_argument("--out_dir", default="out-shakespeare-char", help="a checkpoint of this project, if no --init_from")
    p.add_argument("--data", help="a local hellaswag_val.jsonl (default: download it once)")
    p.add_argument("--limit", type=int, help="score the first N examples only")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16: autocast's precision")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    examples = read_examples(hellaswag_file(args.data), args.limit)
    if not examples:
        raise UserError("no examples to score")
    model, tokenizer, name = load_scored_model(args.init_from, args.out_dir, device)
    result = hellaswag(model, tokenizer, examples, device, autocast(device, dtype))
    print(f"hellaswag: acc {result['acc']:.4f}, acc_norm {result['acc_norm']:.4f} over {result['examples']:,} "
          f"examples ({name})")
    return result


if __name__ == "__main__":
    run_main(main)
