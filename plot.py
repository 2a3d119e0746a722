"""Draw train and val loss of one or several runs, against iterations and against tokens.

    python plot.py out-shakespeare-char                     # -> loss.png
    python plot.py out-a out-b/metrics.jsonl -o compare.png

Each argument is an out_dir or a metrics.jsonl file that train.py wrote. Needs
matplotlib (pip install matplotlib, or pip install -e '.[plot]'). Training also
redraws out_dir/loss.png at each evaluation when matplotlib is installed.
"""
import argparse
import importlib.util
import os
import time

from errors import UserError, run_main
from metrics import METRICS_FILE, current_records, read_metrics


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
