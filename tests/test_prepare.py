import json

import numpy as np
import pytest

import corpus
import prepare
from common import UserError
from tokenizer import load_tokenizer


def test_split_sizes_and_round_trip(workdir):
    text = (workdir / "tiny.txt").read_text()
    folder = workdir / "data" / "tiny"
    meta = json.loads((folder / "meta.json").read_text())
    train = np.fromfile(folder / "train.bin", dtype=np.uint16)
    val = np.fromfile(folder / "val.bin", dtype=np.uint16)
    assert len(train) == int(len(text) * 0.9) and len(train) + len(val) == len(text)
    tok = load_tokenizer(meta)
    assert meta["vocab_size"] == len(set(text)) and meta["chars"] == sorted(set(text))
    assert tok.decode(train.tolist()) + tok.decode(val.tolist()) == text


def test_text_too_short_to_split(tmp_path):
    (tmp_path / "short.txt").write_text("hi")
    with pytest.raises(UserError, match="too short"):
        prepare.prepare(str(tmp_path / "short.txt"), "short", "char", data_root=str(tmp_path / "data"))


def test_failed_download_suggests_input(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "SHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")
    with pytest.raises(UserError, match="--input"):
        prepare.prepare(None, "dl", "char", data_root=str(tmp_path / "data"))
    assert not (tmp_path / "data" / "dl" / "input.txt").exists()


def test_missing_input_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        prepare.prepare(str(tmp_path / "nope.txt"), "x", "char", data_root=str(tmp_path / "data"))


def test_failed_prepare_keeps_previous_dataset(workdir):
    folder = workdir / "data" / "tiny"
    before = (folder / "train.bin").read_bytes()
    (workdir / "short.txt").write_text("hi")
    with pytest.raises(UserError):
        prepare.prepare(str(workdir / "short.txt"), "tiny", "char", data_root=str(workdir / "data"))
    assert (folder / "train.bin").read_bytes() == before


def test_a_file_of_one_long_line_is_read_in_bounded_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "CHUNK_CHARS", 100)
    text = " ".join(f"word{i}" for i in range(2000)) + "\nlast line"  # one line of 16,000 characters
    (tmp_path / "long.txt").write_text(text)
    pieces = list(corpus.read_chunks(str(tmp_path / "long.txt")))
    assert "".join(pieces) == text
    assert max(len(p) for p in pieces) <= 200  # never more than a carry and a block
    assert all(p.endswith("\n") or p[-1] != " " for p in pieces) and pieces[1].startswith(" ")
