"""What training reports: loss in comparable units, and a metrics log of JSON lines.

out_dir/metrics.jsonl gets one JSON object per line, each with a "kind":
"train" (every log_interval steps), "eval" (every eval_interval steps) or
"resume" (where a resumed run picked up). `python plot.py OUT_DIR` draws it.
"""
import json
import math
import os

from errors import UserError

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
