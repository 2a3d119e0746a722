"""Corpora: .txt, .jsonl, .parquet and datasets inputs to GPT-2 BPE shards, resumed runs, and training on shards."""
import json
import os
import sys

import numpy as np
import pytest
import torch

import corpus
import prepare
import train
from checkpoint import load_checkpoint
from common import UserError
from conftest import ROOT, TINY_MODEL, TINY_TEXT
from eval import current_records, read_metrics
from corpus import Corpus, prepare_corpus
from tokenizer import GPT2Tokenizer

SHARDS = dict(shard_tokens=400, val_tokens=300)


def documents(n=40):
    """n different documents: the tiny text's paragraphs, numbered, some of them twice over."""
    paragraphs = [p for p in TINY_TEXT.split("\n\n") if p.strip()][:12]
    return [f"Document {i}.\n" + "\n\n".join(paragraphs[i % 12:i % 12 + 1 + i % 3]) for i in range(n)]


def write_jsonl(path, docs, field="text"):
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({field: doc, "id": len(doc)}) + "\n")


def shard_tokens(folder):
    meta = json.loads((folder / "meta.json").read_text())
    read = lambda s: np.fromfile(folder / s["file"], dtype=np.uint16)  # noqa: E731
    return meta, [read(s) for s in meta["shards"]["val"] + meta["shards"]["train"]]


def expected_tokens(docs):
    """Each document after <|endoftext|>, all in one stream."""
    tokenizer = GPT2Tokenizer()
    return np.array([t for doc in docs for t in [tokenizer.eot_token] + tokenizer.encode(doc)], dtype=np.uint16)


@pytest.fixture
def corpus_dir(tmp_path, gpt2_offline):
    docs = documents()
    (tmp_path / "corpus").mkdir()
    write_jsonl(tmp_path / "corpus" / "a.jsonl", docs[:20])
    write_jsonl(tmp_path / "corpus" / "b.jsonl", docs[20:])
    return tmp_path, docs


def test_jsonl_files_become_shards_of_every_document_in_order(corpus_dir):
    tmp_path, docs = corpus_dir
    meta = prepare_corpus(Corpus(str(tmp_path / "corpus")), "web", str(tmp_path / "data"), workers=1, **SHARDS)
    meta_on_disk, shards = shard_tokens(tmp_path / "data" / "web")
    assert meta == meta_on_disk and meta["tokenizer"] == "gpt2" and meta["dtype"] == "uint16"
    assert [len(s) for s in shards[:-1]] == [300] + [400] * (len(shards) - 2) and 0 < len(shards[-1]) <= 400
    assert [s["file"] for s in meta["shards"]["train"]][:2] == ["train_000001.bin", "train_000002.bin"]
    assert np.array_equal(np.concatenate(shards), expected_tokens(docs))
    assert meta["val_bytes"] == len(GPT2Tokenizer().decode_bytes(shards[0].tolist()))


def test_two_workers_write_the_same_shards_as_one(corpus_dir, monkeypatch):
    tmp_path, docs = corpus_dir
    monkeypatch.setattr(corpus, "TASK_CHARS", 500)  # many small tasks, so both workers get some
    for workers in (1, 2):
        prepare_corpus(Corpus(str(tmp_path / "corpus" / "*.jsonl")), f"w{workers}", str(tmp_path / "data"),
                       workers=workers, **SHARDS)
    one, two = (shard_tokens(tmp_path / "data" / f"w{n}")[1] for n in (1, 2))
    assert len(one) == len(two) and all(np.array_equal(a, b) for a, b in zip(one, two))


def test_parquet_and_a_local_datasets_dataset_give_the_same_tokens(corpus_dir, monkeypatch):
    pyarrow = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    tmp_path, docs = corpus_dir
    (tmp_path / "pq").mkdir()
    parquet.write_table(pyarrow.table({"content": docs}), tmp_path / "pq" / "docs.parquet", row_group_size=7)
    prepare_corpus(Corpus(str(tmp_path / "pq"), text_field="content"), "pq", str(tmp_path / "data"), workers=1,
                   **SHARDS)
    assert np.array_equal(np.concatenate(shard_tokens(tmp_path / "data" / "pq")[1]), expected_tokens(docs))

    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # nothing from the user's cache
    prepare.main(["--hf_dataset", str(tmp_path / "corpus"), "--name", "hf", "--data_root", str(tmp_path / "data"),
                  "--workers", "1", "--shard_tokens", "400", "--val_tokens", "300"])
    assert np.array_equal(np.concatenate(shard_tokens(tmp_path / "data" / "hf")[1]), expected_tokens(docs))


def test_a_text_file_is_one_document(corpus_dir):
    tmp_path, docs = corpus_dir
    (tmp_path / "corpus" / "c.txt").write_text(docs[0] + "\n" + docs[1], encoding="utf-8")
    prepare_corpus(Corpus(str(tmp_path / "corpus")), "mixed", str(tmp_path / "data"), workers=1, **SHARDS)
    # sorted files: a.jsonl, b.jsonl, then c.txt
    assert np.array_equal(np.concatenate(shard_tokens(tmp_path / "data" / "mixed")[1]),
                          expected_tokens(docs + [docs[0] + "\n" + docs[1]]))


def test_a_bad_document_stops_the_run_or_is_skipped(corpus_dir, capsys):
    tmp_path, docs = corpus_dir
    with open(tmp_path / "corpus" / "a.jsonl", "ab") as f:
        f.write(b'{"text": "caf\xe9"}\n{"text": 3}\nnot json\n')  # Latin-1, not UTF-8; no text; not JSON
    (tmp_path / "corpus" / "z.txt").write_bytes(b"\xff\xfe not UTF-8")
    with pytest.raises(UserError, match=r"a.jsonl:21: not valid UTF-8; .*--on_error=skip"):
        prepare_corpus(Corpus(str(tmp_path / "corpus")), "bad", str(tmp_path / "data"), workers=1, **SHARDS)
    prepare_corpus(Corpus(str(tmp_path / "corpus"), on_error="skip"), "bad", str(tmp_path / "data"), workers=1,
                   **SHARDS)
    err = capsys.readouterr().err
    for where in ("a.jsonl:21: not valid UTF-8", "a.jsonl:22: no text", "a.jsonl:23: not a line of JSON",
                  "z.txt: not valid UTF-8"):
        assert f"corpus/{where}" in err
    assert err.count("skipped ") == 4
    assert np.array_equal(np.concatenate(shard_tokens(tmp_path / "data" / "bad")[1]), expected_tokens(docs))


def test_a_stopped_run_continues_from_its_finished_shards(corpus_dir, monkeypatch):
    tmp_path, docs = corpus_dir
    monkeypatch.setattr(corpus, "TASK_CHARS", 700)  # shards end inside tasks: the rerun starts mid-task
    prepare_corpus(Corpus(str(tmp_path / "corpus")), "whole", str(tmp_path / "data"), workers=1, **SHARDS)

    real_write, writes = corpus.Shards.write, []

    def killed_after_three(self, next_start):
        if len(writes) == 3:
            raise KeyboardInterrupt  # as a kill would stop it, between two shards
        writes.append(1)
        real_write(self, next_start)

    monkeypatch.setattr(corpus.Shards, "write", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(Corpus(str(tmp_path / "corpus")), "stopped", str(tmp_path / "data"), workers=1, **SHARDS)
    monkeypatch.setattr(corpus.Shards, "write", real_write)
    folder = tmp_path / "data" / "stopped"
    finished = {name: os.stat(folder / name).st_mtime_ns for name in os.listdir(folder) if name.endswith(".bin")}
    assert len(finished) == 3 and not (folder / "meta.json").exists()
    tokenized = []
    real_tokenize = corpus.tokenize_task
    monkeypatch.setattr(corpus, "tokenize_task", lambda task: tokenized.append(1) or real_tokenize(task))
    prepare_corpus(Corpus(str(tmp_path / "corpus")), "stopped", str(tmp_path / "data"), workers=1, **SHARDS)
    assert all(os.stat(folder / name).st_mtime_ns == t for name, t in finished.items())  # not written again
    whole = shard_tokens(tmp_path / "data" / "whole")[1]
    progress = json.loads((folder / "progress.json").read_text())
    resumed_at = progress["done"][2]["next"]  # [task, token offset] where the fourth shard began
    assert resumed_at[1] > 0  # inside a task: the rerun drops the tokens the third shard already holds
    assert len(tokenized) == len(list(Corpus(str(tmp_path / "corpus")).tasks())) - resumed_at[0]
    again = shard_tokens(folder)[1]
    assert len(again) == len(whole) and all(np.array_equal(a, b) for a, b in zip(again, whole))


def test_a_missing_extra_is_one_line(corpus_dir, monkeypatch):
    tmp_path, _ = corpus_dir
    (tmp_path / "corpus" / "c.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(UserError, match=r"pip install -e '\.\[data\]'"):
        prepare_corpus(Corpus(str(tmp_path / "corpus")), "x", str(tmp_path / "data"), workers=1, **SHARDS)


@pytest.fixture
def sharded(corpus_dir):
    tmp_path, _ = corpus_dir
    prepare_corpus(Corpus(str(tmp_path / "corpus")), "shards", str(tmp_path / "data"), workers=1, **SHARDS)
    return tmp_path


def train_on_shards(folder, out, *extra):
    return train.main(["--dataset=shards", f"--data_root={folder / 'data'}", f"--out_dir={folder / out}", *TINY_MODEL,
                       "--eval_interval=50", "--checkpoint_interval=50", "--log_interval=10", "--learning_rate=3e-3",
                       "--lr_decay_iters=200", "--warmup_iters=10", *extra])


def test_a_tiny_model_trains_on_shards_and_resumes_exactly(sharded):
    whole = train_on_shards(sharded, "a", "--max_iters=200")
    assert whole["losses"][-1] < whole["losses"][0] - 3  # from ln(50,257) = 10.8
    train_on_shards(sharded, "b", "--max_iters=100")
    train_on_shards(sharded, "b", "--max_iters=200", "--init_from=resume")
    records = [[(r["iter"], r.get("loss"), r.get("val_loss")) for r in current_records(read_metrics(sharded / d /
               "metrics.jsonl")) if r["kind"] != "resume"] for d in ("a", "b")]
    assert records[0] == records[1]
    a, b = (load_checkpoint(sharded / d / "last.pt")["model"] for d in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    figures = train_on_shards(sharded, "a", "--eval_only=true")
    assert figures["loss"] < 8 and "ppl" in figures


def test_batches_draw_from_shards_in_proportion_to_their_size():
    shards = [np.zeros(1000, dtype=np.uint16), np.ones(3000, dtype=np.uint16), np.full(9, 2, dtype=np.uint16)]
    batches = train.Batches(shards, 16, 4000, torch.device("cpu"), torch.Generator().manual_seed(0))
    x, y = batches.sample()
    assert torch.equal(x[:, 0], y[:, -1])  # every window lies inside one shard
    share = (x[:, 0] == 1).float().mean().item()
    assert abs(share - (3000 - 16) / (3000 - 16 + 1000 - 16)) < 0.03 and not (x == 2).any()  # 9 tokens: too short


def test_two_processes_train_on_shards(sharded):
    from test_distributed import torchrun
    result = torchrun(sharded, os.path.join(ROOT, "train.py"), "--dataset=shards", "--data_root=data", "--out_dir=ddp",
                      *TINY_MODEL, "--max_iters=20", "--eval_interval=10", "--gradient_accumulation_steps=2")
    assert result.returncode == 0, result.stderr
    assert "across 2 processes" in result.stdout and "step 20: train loss" in result.stdout


def test_reruns_reuse_only_the_shards_that_still_fit(corpus_dir, capsys):
    tmp_path, docs = corpus_dir
    data, folder = str(tmp_path / "data"), tmp_path / "data" / "web"
    prepare_corpus(Corpus(str(tmp_path / "corpus")), "web", data, workers=1, **SHARDS)
    whole = shard_tokens(folder)[1]
    capsys.readouterr()
    prepare_corpus(Corpus(str(tmp_path / "corpus")), "web", data, workers=1, **SHARDS)
    assert "holds every shard of this corpus already" in capsys.readouterr().out

    (folder / "train_000003.bin").unlink()  # a lost shard: the ones before it are kept
    kept = {n: os.stat(folder / n).st_mtime_ns for n in ("val_000000.bin", "train_000001.bin", "train_000002.bin")}
    prepare_corpus(Corpus(str(tmp_path / "corpus")), "web", data, workers=1, **SHARDS)
    out = capsys.readouterr().out
    assert "train_000003.bin is missing or not whole: tokenizing again after train_000002.bin" in out
    assert all(os.stat(folder / n).st_mtime_ns == t for n, t in kept.items())
    assert all(np.array_equal(a, b) for a, b in zip(shard_tokens(folder)[1], whole))

    prepare_corpus(Corpus(str(tmp_path / "corpus")), "web", data, workers=1, shard_tokens=500, val_tokens=300)
    assert "differ from the earlier run's: tokenizing again from the start" in capsys.readouterr().out
    meta, shards = shard_tokens(folder)
    assert [len(s) for s in shards[1:-1]] == [500] * (len(shards) - 2) and sorted(os.listdir(folder)) == sorted(
        ["meta.json", "progress.json"] + [s["file"] for s in meta["shards"]["val"] + meta["shards"]["train"]])


def test_a_document_longer_than_a_task_is_tokenized_as_a_whole(corpus_dir, monkeypatch):
    tmp_path, docs = corpus_dir
    monkeypatch.setattr(corpus, "TASK_CHARS", 50)  # every document is cut into many pieces
    long = " ".join(docs)  # words, runs of newlines, punctuation, double spaces
    (tmp_path / "long").mkdir()
    write_jsonl(tmp_path / "long" / "one.jsonl", [long + "  end  of  it"])
    prepare_corpus(Corpus(str(tmp_path / "long")), "long", str(tmp_path / "data"), workers=1, **SHARDS)
    assert np.array_equal(np.concatenate(shard_tokens(tmp_path / "data" / "long")[1]), expected_tokens([long + "  end  of  it"]))


def test_a_parquet_file_without_the_text_column(corpus_dir, capsys):
    pyarrow = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    tmp_path, docs = corpus_dir
    parquet.write_table(pyarrow.table({"body": docs[:3]}), tmp_path / "corpus" / "c.parquet")
    parquet.write_table(pyarrow.table({"text": [1, 2, 3]}), tmp_path / "corpus" / "d.parquet")
    with pytest.raises(UserError, match=r"c.parquet: no column of text named 'text'"):
        prepare_corpus(Corpus(str(tmp_path / "corpus")), "pq", str(tmp_path / "data"), workers=1, **SHARDS)
    prepare_corpus(Corpus(str(tmp_path / "corpus"), on_error="skip"), "pq", str(tmp_path / "data"), workers=1,
                   **SHARDS)
    assert capsys.readouterr().err.count("no column of text named 'text'") == 2  # the ints of d.parquet too
    assert np.array_equal(np.concatenate(shard_tokens(tmp_path / "data" / "pq")[1]), expected_tokens(docs))
