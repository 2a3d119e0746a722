"""What training reports, and its plots: loss in comparable units, the metrics log, loss curves.

    python plot.py out-shakespeare-char                     # -> loss.png
    python plot.py out-a out-b/metrics.jsonl -o compare.png

out_dir/metrics.jsonl gets one JSON object per line, each with a "kind":
"train" (every log_interval steps), "eval" (every eval_interval steps) or
"resume" (where a resumed run picked up). Each argument of plot.py is an out_dir
or such a file. Drawing needs matplotlib (pip install matplotlib, or pip install
-e '.[plot]'); training redraws out_dir/loss.png at each evaluation when it is installed.
"""
import argparse
import importlib.util
import json
import math
import os
import time

from common import UserError, run_main

LN2 = math.log(2)
METRICS_FILE = "metrics.jsonl"


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
    # Write beside the target, then rename: a viewer never sees half a file.
    tmp = f"{output}.tmp{os.getpid()}.png"
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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


def main(argv=None):
    p = argparse.ArgumentParser(description="Plot train and val loss of runs against iterations and tokens.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="an out_dir of train.py, or a metrics.jsonl file")
    p.add_argument("-o", "--output", default="loss.png", help="the PNG to write (default: loss.png)")
    args = p.parse_args(argv)
    runs = [load_run(path) for path in args.runs]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("plot.py needs matplotlib: pip install matplotlib (or pip install -e '.[plot]')") from None
    if not args.output.lower().endswith(".png"):
        raise UserError(f"--output {args.output} should be a .png file")
    try:
        draw(runs, args.output)
    except OSError as e:
        raise UserError(f"could not write {args.output} ({e.strerror or e}); choose another --output") from None
    print(f"wrote {args.output} ({len(runs)} run{'s' if len(runs) > 1 else ''})")


if __name__ == "__main__":
    run_main(main)
