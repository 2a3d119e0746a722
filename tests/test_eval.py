"""HellaSwag scoring: made examples whose right ending a tiny trained model knows, against a hand computation."""
import json
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

import eval as evaluation
from checkpoint import save_checkpoint
from common import UserError
from conftest import run_script
from model import GPT, GPTConfig
from prepare import CharTokenizer
from test_scripts import assert_one_line_error

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
