"""What training reports: the metrics log across a resume, its units, wandb, and estimates that wait little."""
import json
import math
import sys
import types

import pytest
import torch

import train
from conftest import TINY_MODEL
from common import UserError
from eval import LN2, MetricsLog, current_records, read_metrics
from model import GPT, GPTConfig
from optim import Distributed
from tokenizer import load_dataset

TOKENS_PER_STEP = 4 * 16  # TINY_MODEL's batch_size * block_size


def run_train(workdir, monkeypatch, *extra):
    """train.main in this process (faster than a subprocess) from workdir, on data/tiny."""
    monkeypatch.chdir(workdir)
    return train.main(["--dataset=tiny", "--out_dir=out", "--eval_interval=3", "--checkpoint_interval=3",
                       *TINY_MODEL, *extra])


def test_metrics_log_continues_across_resume(workdir, monkeypatch, capsys):
    run_train(workdir, monkeypatch, "--max_iters=6")
    run_train(workdir, monkeypatch, "--max_iters=10", "--init_from=resume")
    out = capsys.readouterr().out
    assert "iter 10/10" in out and "eta" in out

    lines = (workdir / "out" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line parses
    kinds = [r["kind"] for r in records]
    assert set(kinds) == {"train", "eval", "resume"}
    assert [r["iter"] for r in records if r["kind"] == "resume"] == [6]
    train_iters = [r["iter"] for r in records if r["kind"] == "train"]
    assert train_iters == list(range(1, 11))  # log_interval=1: every step, once, in order
    assert [r["iter"] for r in records if r["kind"] == "eval"] == [0, 3, 6, 9, 10]  # no re-eval at 6
    for r in records:
        assert r["tokens"] == r["iter"] * TOKENS_PER_STEP
    for r in (r for r in records if r["kind"] == "train"):
        assert math.isfinite(r["loss"]) and r["lr"] > 0 and r["ms_per_iter"] > 0 and r["tokens_per_sec"] > 0
        assert "mfu" in r
    for r in (r for r in records if r["kind"] == "eval"):
        assert r["val_bpc"] == pytest.approx(r["val_loss"] / LN2)
    elapsed = [r["elapsed"] for r in records]
    assert elapsed == sorted(elapsed) and elapsed[-1] > 0  # time goes on across the resume


def test_resume_drops_superseded_records():
    records = [{"kind": "eval", "iter": 0}, {"kind": "train", "iter": 1}, {"kind": "train", "iter": 2},
               {"kind": "eval", "iter": 2}, {"kind": "train", "iter": 3},  # stopped after the checkpoint at 2
               {"kind": "resume", "iter": 2}, {"kind": "train", "iter": 3}, {"kind": "train", "iter": 4}]
    kept = current_records(records)
    assert [(r["kind"], r["iter"]) for r in kept] == [
        ("eval", 0), ("train", 1), ("train", 2), ("eval", 2), ("resume", 2), ("train", 3), ("train", 4)]


def test_read_metrics_skips_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "iter": 1}\n{"kind": "tra')
    assert read_metrics(path) == [{"kind": "train", "iter": 1}]


def test_a_record_after_a_torn_line_is_kept(tmp_path):
    """A run killed mid-line leaves no newline; the next run's first record must not join that line."""
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "iter": 1}\n{"kind": "tra')
    MetricsLog(str(tmp_path)).write("resume", iter=1)
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"kind": "train", "iter": 1}, {"kind": "resume", "iter": 1}]


def test_wandb_is_imported_only_when_on(workdir, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now fails, as when it is not installed
    run_train(workdir, monkeypatch, "--max_iters=1")  # off: trains without touching wandb
    with pytest.raises(UserError, match="wandb is not installed"):
        run_train(workdir, monkeypatch, "--max_iters=1", "--wandb_log=true", "--out_dir=out2")


def test_wandb_gets_the_records(workdir, monkeypatch):
    calls = []
    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)),
                                 log=lambda data, step: calls.append(("log", data, step)))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run_train(workdir, monkeypatch, "--max_iters=3", "--wandb_log=true", "--wandb_project=p")
    assert calls[0][0] == "init" and calls[0][1]["project"] == "p" and calls[0][1]["config"]["n_layer"] == 2
    evals = [(call[1], call[2]) for call in calls[1:] if "eval/val_loss" in call[1]]
    assert [step for _, step in evals] == [0, 3]
    assert all("eval/val_bpc" in data and "eval/lr" in data for data, _ in evals)
    assert any("train/ms_per_iter" in call[1] for call in calls[1:])


def test_evaluation_waits_for_the_device_once_per_split(workdir, monkeypatch):
    _, splits = load_dataset(str(workdir / "data"), "tiny")
    model = GPT(GPTConfig(vocab_size=64, n_layer=1, n_head=2, n_embd=16, block_size=8))
    gen = torch.Generator().manual_seed(0)
    batches = {s: train.Batches(splits[s], 8, 2, torch.device("cpu"), gen) for s in splits}
    reads, real_item = [], torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append(1) or real_item(t))
    losses = train.estimate_loss(model, batches, 5, torch.autocast("cpu", enabled=False), Distributed())
    assert set(losses) == {"train", "val"} and len(reads) == 2
