"""What training reports: the metrics log across a resume, --eval_only, bpc/ppl/bpb, wandb."""
import json
import math
import sys
import types

import numpy as np
import pytest
import torch

import train
from conftest import TINY_MODEL
from common import UserError
from plot import LN2, MetricsLog, current_records, loss_figures, read_metrics
from model import GPTConfig, build_model
from prepare import prepare

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


def test_loss_figures():
    char = loss_figures(2.0, "char", bytes_per_token=1.25)
    assert char == pytest.approx({"loss": 2.0, "bpc": 2.0 / math.log(2), "bpb": 2.0 / math.log(2) / 1.25})
    bpe = loss_figures(3.0, "gpt2", bytes_per_token=4.0)
    assert bpe == pytest.approx({"loss": 3.0, "ppl": math.exp(3.0), "bpb": 3.0 / math.log(2) / 4.0})
    assert "bpb" not in loss_figures(3.0, "gpt2")  # an old dataset without val_bytes


def test_eval_only_is_repeatable_and_gives_bpc(workdir, monkeypatch, capsys):
    run_train(workdir, monkeypatch, "--max_iters=3")
    first = run_train(workdir, monkeypatch, "--eval_only=true")
    second = run_train(workdir, monkeypatch, "--eval_only=true", "--batch_size=3")  # other batches, same windows
    assert first["loss"] == pytest.approx(second["loss"], rel=1e-6)
    assert run_train(workdir, monkeypatch, "--eval_only=true") == first  # exactly the same figures
    assert first["bpc"] == pytest.approx(first["loss"] / math.log(2), rel=1e-12)
    assert first["bpb"] == pytest.approx(first["bpc"])  # ASCII: one byte per character
    assert "over all 499 targets" in capsys.readouterr().out  # the 500-character val split, every target


def test_evaluate_split_scores_every_target_once():
    """A bigram model's loss at a target depends only on the previous token, so windowing cannot
    change the exact mean over all (token, next token) pairs; a missed or double-counted target would."""
    torch.manual_seed(0)
    model = build_model(GPTConfig(arch="bigram", vocab_size=7, block_size=8))
    data = np.random.default_rng(0).integers(0, 7, size=8 * 5 + 4).astype(np.uint16)  # 43 targets: a tail of 3
    with torch.no_grad():
        logp = torch.log_softmax(model.table.weight, dim=-1)  # (vocab, vocab): row = previous token
        exact = -logp[data[:-1].astype(np.int64), data[1:].astype(np.int64)].mean().item()
    for batch_size in (1, 2, 6):
        got = train.evaluate_split(model, data, 8, batch_size, torch.device("cpu"), torch.autocast("cpu", enabled=False))
        assert got == pytest.approx(exact, rel=1e-6)


def test_bits_per_byte_with_multibyte_characters(workdir, monkeypatch):
    text = "Ça fait déjà l'été — naïve café, über Grüße: «€100»!\n" * 60
    (workdir / "multi.txt").write_text(text, encoding="utf-8")
    meta = prepare(str(workdir / "multi.txt"), "multi", "char", data_root=str(workdir / "data"))
    val_text = text[meta["train_tokens"]:]  # one token per character
    assert meta["val_bytes"] == len(val_text.encode("utf-8")) > meta["val_tokens"] == len(val_text)

    monkeypatch.chdir(workdir)
    common = ["--dataset=multi", "--out_dir=out_multi", *TINY_MODEL]
    train.main([*common, "--max_iters=2", "--eval_interval=2"])
    figures = train.main([*common, "--eval_only=true"])
    assert figures["bpb"] == pytest.approx(figures["bpc"] * meta["val_tokens"] / meta["val_bytes"], rel=1e-12)
    assert figures["bpb"] < figures["bpc"]


def test_eval_only_refuses_another_vocabulary(workdir, monkeypatch):
    (workdir / "other.txt").write_text("xyz and other letters, quite different: QQQ\n" * 40)
    prepare(str(workdir / "other.txt"), "other", "char", data_root=str(workdir / "data"))
    run_train(workdir, monkeypatch, "--max_iters=1")
    with pytest.raises(UserError, match="different vocabulary"):
        train.main(["--dataset=other", "--out_dir=out", "--eval_only=true", "--device=cpu"])


def test_eval_only_refuses_a_val_split_shorter_than_a_window(workdir, monkeypatch):
    run_train(workdir, monkeypatch, "--max_iters=1")
    folder = workdir / "data" / "tiny"
    np.arange(10, dtype=np.uint16).tofile(folder / "val.bin")  # 10 tokens < block_size 16
    with pytest.raises(UserError, match="too few for the checkpoint's block_size 16"):
        run_train(workdir, monkeypatch, "--eval_only=true")


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
