"""What training reports: loss in comparable units, and a metrics log of JSON lines."""
import json
import math
import os

LN2 = math.log(2)


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
    """One JSON object per line in out_dir/metrics.jsonl, appended across resumes."""

    def __init__(self, out_dir, filename="metrics.jsonl"):
        self.path = os.path.join(out_dir, filename)

    def write(self, **record):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


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
