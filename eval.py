"""How good a model is and how a run went: loss in comparable units, the whole val split scored
once, zero-shot HellaSwag, and the metrics log with its loss curves.

    python train.py config/shakespeare_char_cpu.py --eval_only=true   # every val target once (evaluate_checkpoint)
    python eval.py hellaswag --init_from gpt2             # OpenAI's GPT-2 (124M): published acc_norm 0.2955
    python eval.py hellaswag --out_dir out-gpt2           # a checkpoint of this project
    python eval.py plot out-shakespeare-char              # -> loss.png
    python eval.py plot out-a out-b/metrics.jsonl -o compare.png

HellaSwag (Zellers et al. 2019) gives a context and four endings, one of them
right. The model scores every ending by the loss of the ending's tokens given
the context: the ending of lowest total loss is its answer for acc, the ending of
lowest mean loss per token for acc_norm (which does not favour short endings).
The 10,042 validation examples are downloaded once into the cache that GPT-2's
weights use.

out_dir/metrics.jsonl gets one JSON object per line, each with a "kind":
"train" (every log_interval steps), "eval" (every eval_interval steps) or
"resume" (where a resumed run picked up). Drawing needs matplotlib (pip install
-e '.[plot]'); training redraws out_dir/loss.png at each evaluation when it is installed.
"""
import argparse
import importlib.util
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from checkpoint import BEST, cache_dir, check_gpt2_source, check_vocabulary, gpt2_weights, load_model, resolve_checkpoint
from common import UserError, atomic_write, autocast, download, pick_device, pick_dtype, run_main
from tokenizer import bytes_per_token, check_long_enough

LN2 = math.log(2)
METRICS_FILE = "metrics.jsonl"


# --------------------------------------------------------------------------- loss in comparable units

def loss_figures(loss, tokenizer_kind, bytes_per_token=None):
    """A loss in nats per token, with the units that make it comparable.

    Character models get bits per character, BPE models perplexity, and both get
    bits per byte (when the bytes per token of the split are known), which does
    not depend on the tokenizer.
    """
    figures = {"loss": loss}
    if tokenizer_kind == "char":
        figures["bpc"] = loss / LN2
    else:
        figures["ppl"] = math.exp(min(loss, 50.0))
    if bytes_per_token:
        figures["bpb"] = loss / LN2 / bytes_per_token
    return figures


def format_figures(figures):
    parts = [f"{figures['loss']:.4f}"]
    for key in ("bpc", "ppl", "bpb"):
        if key in figures:
            parts.append(f"{key} {figures[key]:.4f}" if key != "ppl" else f"ppl {figures[key]:.2f}")
    return parts[0] + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")


# --------------------------------------------------------------------------- the whole val split

@torch.no_grad()
def evaluate_split(model, data, block_size, batch_size, device, ctx, ddp=None):
    """Mean loss over every next-token target of a split (a token file or a list of shards), each
    scored once: the same figure every time.

    Consecutive windows of block_size targets; the tail too short for a window is
    scored in one last window ending at the shard's end, counting only its new
    targets. Under torchrun (ddp, see optim.Distributed) the windows are shared out among the processes.
    """
    model.eval()
    T, shards = block_size, data if isinstance(data, list) else [data]
    windows = []  # (shard, first token, targets at its start that an earlier window scored)
    for i, shard in enumerate(shards):
        n_targets = len(shard) - 1
        windows += [(i, s, 0) for s in range(0, n_targets - T + 1, T)]
        if n_targets % T and n_targets >= T:
            windows.append((i, n_targets - T, T - n_targets % T))
    total = torch.zeros((), dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
    mine = windows[ddp.rank::ddp.world_size] if ddp else windows
    for first in range(0, len(mine), batch_size):
        rows = mine[first:first + batch_size]
        tokens = np.stack([shards[i][s:s + T + 1] for i, s, _ in rows]).astype(np.int64)
        tokens = torch.from_numpy(tokens).to(device)
        with ctx:
            logits, _ = model(tokens[:, :-1])
        losses = F.cross_entropy(logits.float().transpose(1, 2), tokens[:, 1:], reduction="none")  # (B, T)
        for row, (_, _, seen) in enumerate(rows):
            losses[row, :seen] = 0.0  # targets the previous window already scored
        total += losses.sum()
    total = ddp.sum(total) if ddp else total
    return (total / sum(len(s) - 1 for s in shards if len(s) > T)).item()


def evaluate_checkpoint(cfg, meta, splits, device, ctx, ddp):
    """train.py --eval_only: out_dir/ckpt.pt, or GPT-2's weights when init_from names them, scored on
    every target of the val split; returns the figures."""
    if cfg.init_from in ("scratch", "resume"):
        path = os.path.join(cfg.out_dir, BEST)
        model, _, state = load_model(path)
        check_vocabulary(state, meta, cfg.dataset, path, "evaluate")
    else:
        path, model, state = cfg.init_from, gpt2_weights(cfg.init_from, meta, cfg.dataset, ddp).eval(), {}
    block_size, val = model.config.block_size, splits["val"]
    check_long_enough(val, block_size, f"the val split of {cfg.dataset}")
    loss = evaluate_split(model.to(device), val, block_size, cfg.batch_size, device, ctx, ddp)
    figures = loss_figures(loss, meta["tokenizer"], bytes_per_token(meta))
    if ddp.rank == 0:
        scored = sum(len(s) - 1 for s in val if len(s) > block_size)  # a shard shorter than a window is left out
        print(f"val loss {format_figures(figures)} over all {scored:,} targets of {cfg.dataset} "
              f"({path}, iteration {state.get('iter_num', '?')})")
    return figures


# --------------------------------------------------------------------------- HellaSwag

HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"


def hellaswag_file(path=None):
    """A local HellaSwag .jsonl: the one given, or the validation set, downloaded once."""
    if path:
        if not os.path.isfile(path):
            raise UserError(f"no HellaSwag file at {path}")
        return path
    path = os.path.join(cache_dir(), "hellaswag", "hellaswag_val.jsonl")
    if not os.path.isfile(path):
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


# --------------------------------------------------------------------------- the metrics log and loss curves

class MetricsLog:
    """One JSON object per line in out_dir/metrics.jsonl, appended across resumes.

    With a wandb module (see start_wandb), each record is also sent there, its
    fields prefixed by its kind ("eval/val_loss"), at step = its iteration.
    """

    def __init__(self, out_dir, wandb=None, filename=METRICS_FILE):
        self.path = os.path.join(out_dir, filename)
        self.wandb = wandb
        self.torn = _ends_mid_line(self.path)  # a run killed while writing a line

    def write(self, kind, **fields):
        record = {"kind": kind, **fields}
        try:
            with open(self.path, "a") as f:
                if self.torn:  # end the torn line, so this record starts a line of its own
                    f.write("\n")
                    self.torn = False
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise UserError(f"cannot write {self.path} ({e.strerror or e}); free some space or choose another "
                            "--out_dir, then continue with --init_from=resume") from None
        if self.wandb is not None:
            self.wandb.log({f"{kind}/{k}": v for k, v in fields.items() if v is not None and k != "iter"},
                           step=fields["iter"])


def _ends_mid_line(path):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


def read_metrics(path):
    """The records of a metrics log, skipping a torn last line from a crash."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def current_records(records):
    """The records of the run as it stands now, without the ones a resume superseded.

    A run stopped after its last checkpoint has records past it; resuming from
    the checkpoint at iteration N redoes those steps, so a "resume" record at N
    drops the earlier records beyond N.
    """
    kept = []
    for record in records:
        if record.get("kind") == "resume":
            kept = [r for r in kept if r.get("iter", 0) <= record["iter"]]
        kept.append(record)
    return kept


def start_wandb(project, run_name, config):
    """Import and start Weights & Biases (only called when wandb_log is on)."""
    try:
        import wandb
    except ImportError:
        raise UserError("wandb_log is on but wandb is not installed; pip install wandb (then wandb login), "
                        "or leave --wandb_log off") from None
    wandb.init(project=project, name=run_name, config=config)
    return wandb



def load_run(path):
    """(label, records) of the run in an out_dir or a metrics file."""
    file = os.path.join(path, METRICS_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise UserError(f"no metrics log at {file}; give an out_dir of train.py or a {METRICS_FILE} file")
    records = [r for r in current_records(read_metrics(file)) if r.get("kind") in ("train", "eval")]
    if not records:
        raise UserError(f"{file} holds no training or evaluation records yet")
    folder = path if os.path.isdir(path) else os.path.dirname(file) or "."
    return os.path.basename(os.path.abspath(folder)), records


def curves(records):
    """{'train': [(iter, tokens, loss)], 'val': [...]} of one run.

    Train loss is the per-step loss from the "train" records; a run logged with
    no such records falls back to the train loss that each evaluation estimates.
    """
    train = [(r["iter"], r.get("tokens"), r["loss"]) for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    if not train:
        train = [(r["iter"], r.get("tokens"), r["train_loss"]) for r in evals]
    return {"train": train, "val": [(r["iter"], r.get("tokens"), r["val_loss"]) for r in evals]}


def draw(runs, output):
    """Write a PNG with loss against iterations (left) and tokens (right) for each (label, records) run."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    from matplotlib.ticker import EngFormatter

    fig = Figure(figsize=(11, 4.2), dpi=100)
    fig.subplots_adjust(left=0.07, right=0.985, bottom=0.12, top=0.97, wspace=0.05)  # fixed: layout engines are slow
    by_iter, by_tokens = fig.subplots(1, 2, sharey=True)
    for i, (label, records) in enumerate(runs):
        color = f"C{i % 10}"
        lines = curves(records)
        best = min((loss for _, _, loss in lines["val"]), default=None)
        for ax, x in ((by_iter, 0), (by_tokens, 1)):
            train = [(p[x], p[2]) for p in lines["train"] if p[x] is not None]
            val = [(p[x], p[2]) for p in lines["val"] if p[x] is not None]
            if train:
                ax.plot(*zip(*train), color=color, alpha=0.4, linewidth=1, label=f"{label} train")
            if val:
                ax.plot(*zip(*val), color=color, marker="o", markersize=3, linewidth=1.8,
                        label=f"{label} val (best {best:.4f})")
    by_iter.set_xlabel("iteration")
    by_tokens.set_xlabel("tokens")
    by_tokens.xaxis.set_major_formatter(EngFormatter())
    by_iter.set_ylabel("loss (nats per token)")
    for ax in (by_iter, by_tokens):
        ax.grid(alpha=0.3)
    by_iter.legend(fontsize="small")
    atomic_write(output, lambda f: fig.savefig(f, format="png"))  # a viewer never sees half a file


class TrainingPlot:
    """out_dir/loss.png, redrawn at evaluations while training; it never stops a run.

    Without matplotlib it says so once and stays off; a failed draw turns it off
    with one line. Drawing takes a fraction of a second, so redraws are skipped
    while the time since the last one is under 20 times its cost (at most ~5% of
    the run), except the final one.
    """

    def __init__(self, out_dir, metrics_path, filename="loss.png"):
        self.path, self.metrics_path = os.path.join(out_dir, filename), metrics_path
        self.on, self.next_time = True, 0.0
        if importlib.util.find_spec("matplotlib") is None:  # look, but import only when drawing
            print(f"(pip install matplotlib to get {self.path} drawn at each evaluation)")
            self.on = False

    def update(self, final=False):
        if not self.on or (time.perf_counter() < self.next_time and not final):
            return
        t0 = time.perf_counter()
        try:
            draw([load_run(self.metrics_path)], self.path)
        except Exception as e:  # a plot is a convenience: report it and train on
            print(f"could not draw {self.path} ({type(e).__name__}: {str(e)[:120]}); training goes on without it")
            self.on = False
        now = time.perf_counter()
        self.next_time = now + 20 * (now - t0)


# --------------------------------------------------------------------------- the command line

def score_hellaswag(args):
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    examples = read_examples(hellaswag_file(args.data), args.limit)
    if not examples:
        raise UserError("no examples to score")
    model, tokenizer, _ = load_model(check_gpt2_source(args.init_from, "--init_from") if args.init_from
                                     else args.out_dir)
    name = args.init_from or resolve_checkpoint(args.out_dir)
    result = hellaswag(model.to(device), tokenizer, examples, device, autocast(device, dtype))
    print(f"hellaswag: acc {result['acc']:.4f}, acc_norm {result['acc_norm']:.4f} over {result['examples']:,} "
          f"examples ({name})")
    return result


def plot_runs(args):
    runs = [load_run(path) for path in args.runs]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install matplotlib (or pip install -e '.[plot]')") from None
    if not args.output.lower().endswith(".png"):
        raise UserError(f"--output {args.output} should be a .png file")
    draw(runs, args.output)
    print(f"wrote {args.output} ({len(runs)} run{'s' if len(runs) > 1 else ''})")


def main(argv=None):
    p = argparse.ArgumentParser(description="Score a model on a benchmark, or plot the loss curves of runs.")
    commands = p.add_subparsers(dest="command", required=True)
    h = commands.add_parser("hellaswag", help="zero-shot HellaSwag accuracy")
    h.add_argument("--init_from", help="GPT-2's weights: gpt2 ... gpt2-xl, or a local model.safetensors file or folder")
    h.add_argument("--out_dir", default="out-shakespeare-char", help="a checkpoint of this project, if no --init_from")
    h.add_argument("--data", help="a local hellaswag_val.jsonl (default: download it once)")
    h.add_argument("--limit", type=int, help="score the first N examples only")
    h.add_argument("--device", default="auto")
    h.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16: autocast's precision")
    plot = commands.add_parser("plot", help="train and val loss of runs against iterations and tokens")
    plot.add_argument("runs", nargs="+", metavar="RUN", help="an out_dir of train.py, or a metrics.jsonl file")
    plot.add_argument("-o", "--output", default="loss.png", help="the PNG to write (default: loss.png)")
    args = p.parse_args(argv)
    return score_hellaswag(args) if args.command == "hellaswag" else plot_runs(args)


if __name__ == "__main__":
    run_main(main)
