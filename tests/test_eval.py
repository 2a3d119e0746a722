"""eval.py's scores: the whole val split, each target once (--eval_only), loss in bits, and HellaSwag
on made examples whose right ending a tiny trained model knows, against a hand computation."""
import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eval as evaluation
import train
from checkpoint import save_checkpoint
from common import UserError
from conftest import TINY_MODEL, run_script
from eval import loss_figures
from model import GPT, GPTConfig, build_model
from prepare import prepare
from tokenizer import CharTokenizer
from test_scripts import assert_one_line_error


def run_train(workdir, monkeypatch, *extra):
    """train.main in this process (faster than a subprocess) from workdir, on data/tiny."""
    monkeypatch.chdir(workdir)
    return train.main(["--dataset=tiny", "--out_dir=out", "--eval_interval=3", "--checkpoint_interval=3",
                       *TINY_MODEL, *extra])

TEXT = "the cat sat on the mat. the dog ran to the park. the bird flew over the tree. " * 40
EXAMPLES = [
    {"ctx": "the cat sat on the", "endings": ["mat.", "tree.", "park.", "cat."], "label": 0},
    {"ctx": "the dog ran to the", "endings": ["mat.", "bird.", "tree.", "park."], "label": 3},
    {"ctx": "the bird flew over the", "endings": ["tree.", "park.", "mat.", "dog ran."], "label": 1},  # wrong on purpose
    {"ctx": "the dog", "endings": ["sat on the park.", "ran to the park.", "ran.", "flew."], "label": 1},
]


@pytest.fixture(scope="module")
def memorized():
    """A tiny character model trained until it knows the three sentences."""
    tokenizer = CharTokenizer.from_text(TEXT)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=48, block_size=32))
    data = torch.tensor(tokenizer.encode(TEXT))
    optimizer = model.configure_optimizer(3e-3, 0.0, (0.9, 0.99))
    gen = torch.Generator().manual_seed(0)
    for _ in range(400):
        starts = torch.randint(len(data) - 33, (16,), generator=gen)
        batch = torch.stack([data[s:s + 33] for s in starts])
        loss = model(batch[:, :-1], batch[:, 1:])[1]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), tokenizer


def by_hand(model, tokenizer, example):
    """Each ending's total and mean loss, one sequence at a time, with no padding or batching."""
    totals, means = [], []
    for ending in example["endings"]:
        context, tail = tokenizer.encode(example["ctx"]), tokenizer.encode(" " + ending)
        sequence = torch.tensor([context + tail])
        with torch.no_grad():
            logp = F.log_softmax(model(sequence[:, :-1])[0][0], dim=-1)  # (T-1, V)
        losses = [-logp[len(context) - 1 + j, token].item() for j, token in enumerate(tail)]
        totals.append(sum(losses))
        means.append(sum(losses) / len(losses))
    return totals, means


def test_scores_agree_with_a_hand_computation(memorized):
    model, tokenizer = memorized
    no_autocast = torch.autocast("cpu", enabled=False)
    right = right_norm = 0
    for example in EXAMPLES:
        total, mean = evaluation.ending_losses(model, tokenizer, example, torch.device("cpu"), no_autocast)
        totals, means = by_hand(model, tokenizer, example)
        assert torch.allclose(total, torch.tensor(totals), atol=1e-4)
        assert torch.allclose(mean, torch.tensor(means), atol=1e-5)
        right += min(range(4), key=totals.__getitem__) == example["label"]
        right_norm += min(range(4), key=means.__getitem__) == example["label"]
    result = evaluation.hellaswag(model, tokenizer, EXAMPLES, torch.device("cpu"), no_autocast)
    assert result == {"acc": right / 4, "acc_norm": right_norm / 4, "examples": 4}
    # The model knows the sentences: the three honest examples right, the mislabelled one wrong.
    assert result["acc_norm"] == 0.75


def test_the_command_scores_a_checkpoint_and_refuses_bad_files(memorized, tmp_path, offline, monkeypatch):
    model, tokenizer = memorized
    save_checkpoint({"model": model.state_dict(), "model_config": asdict(model.config),
                     "tokenizer": tokenizer.to_meta()}, str(tmp_path / "out" / "ckpt.pt"))
    (tmp_path / "hs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    result = run_script("eval.py", "hellaswag", "--out_dir=out", "--data=hs.jsonl", "--device=cpu", cwd=tmp_path)
    assert result.stdout.startswith("hellaswag: acc ") and "acc_norm 0.7500 over 4 examples" in result.stdout

    (tmp_path / "bad.jsonl").write_text(json.dumps({"ctx": "x", "endings": ["a"], "label": 0}) + "\n")
    assert_one_line_error(run_script("eval.py", "hellaswag", "--out_dir=out", "--data=bad.jsonl", cwd=tmp_path,
                                     check=False), "bad.jsonl:1 is not a HellaSwag example")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing downloaded yet, and no network
    result = run_script("eval.py", "hellaswag", "--out_dir=out", cwd=tmp_path, check=False)
    assert result.returncode == 1 and "--data PATH" in result.stderr.splitlines()[-1]
    with pytest.raises(UserError, match="no HellaSwag file"):
        evaluation.hellaswag_file(str(tmp_path / "missing.jsonl"))


def test_rows_longer_than_the_context_keep_their_last_tokens(memorized):
    _, tokenizer = memorized
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=8)).eval()
    example = {"ctx": "the cat", "endings": ["sat on the mat.", "ran.", "sat on the tree.", "flew."], "label": 0}
    total, _ = evaluation.ending_losses(model, tokenizer, example, torch.device("cpu"),
                                        torch.autocast("cpu", enabled=False))
    for i, ending in enumerate(example["endings"]):
        tail = tokenizer.encode(" " + ending)
        row = torch.tensor([tokenizer.encode(example["ctx"]) + tail])[:, -9:]  # the window's 8 positions and a target
        with torch.no_grad():
            logp = F.log_softmax(model(row[:, :-1])[0][0], dim=-1)
        scored = min(len(tail), row.shape[1] - 1)  # the ending's tokens that are still predicted in the window
        expected = -sum(logp[row.shape[1] - 1 - scored + j, row[0, row.shape[1] - scored + j]].item()
                        for j in range(scored))
        assert abs(total[i].item() - expected) < 1e-4, ending


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
        got = evaluation.evaluate_split(model, data, 8, batch_size, torch.device("cpu"), torch.autocast("cpu", enabled=False))
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
    with pytest.raises(UserError, match="val split of tiny has 10 tokens, too few for block_size 16"):
        run_train(workdir, monkeypatch, "--eval_only=true")


def test_loss_figures():
    char = loss_figures(2.0, "char", bytes_per_token=1.25)
    assert char == pytest.approx({"loss": 2.0, "bpc": 2.0 / math.log(2), "bpb": 2.0 / math.log(2) / 1.25})
    bpe = loss_figures(3.0, "gpt2", bytes_per_token=4.0)
    assert bpe == pytest.approx({"loss": 3.0, "ppl": math.exp(3.0), "bpb": 3.0 / math.log(2) / 4.0})
    assert "bpb" not in loss_figures(3.0, "gpt2")  # an old dataset without val_bytes
