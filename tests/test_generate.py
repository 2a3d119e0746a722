"""generate.py, text in and text out: stop strings, streaming, and the README's three-line example run as written."""
import re
from dataclasses import asdict

import torch

import generate
from checkpoint import save_checkpoint
from generate import Generator, load
from model import GPT, GPTConfig
from tokenizer import CharTokenizer
from conftest import ROOT, TINY_TEXT


def tiny_generator():
    tokenizer = CharTokenizer.from_text(TINY_TEXT + "ROMEO:")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=16)).eval()
    return Generator(model, tokenizer, torch.device("cpu"))


def test_stop_string_ends_the_text_there():
    gen = tiny_generator()
    full = gen("All:", max_new_tokens=200, temperature=0)
    generated = full[len("All:"):]
    stop = generated[20:22]  # a string the greedy continuation is known to contain
    first = generated.find(stop)
    assert gen.steps == 200
    text = gen("All:", max_new_tokens=200, temperature=0, stop=stop)
    assert text == "All:" + generated[:first]
    assert stop not in text[len("All:"):]
    assert gen.steps == first + len(stop)  # one character a token: generation ended with the stop string


def test_stream_yields_the_same_text_piece_by_piece():
    gen = tiny_generator()
    pieces = list(gen.stream("First", max_new_tokens=40, seed=3))
    assert len(pieces) > 1
    assert "First" + "".join(pieces) == gen("First", max_new_tokens=40, seed=3)


class ByteTokenizer:
    """Token i is byte i: a character of several UTF-8 bytes takes several tokens."""

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode_bytes(self, ids):
        return bytes(ids)


def test_stream_holds_back_a_character_cut_between_tokens(monkeypatch):
    text = "né ☃!"
    def replay(model, idx, max_new_tokens, *args):  # the model "generates" text's bytes, one a step
        for b in text.encode("utf-8")[:max_new_tokens]:
            yield torch.tensor([[b]])
    monkeypatch.setattr("generate.generate_tokens", replay)
    gen = Generator(None, ByteTokenizer(), torch.device("cpu"))
    pieces = list(gen.stream_batch("x", max_new_tokens=len(text.encode("utf-8"))))
    assert [p[0] for p in pieces] == ["n", "", "é", " ", "", "", "☃", "!"]  # é is 2 bytes, ☃ 3


def test_seeded_samples_repeat_and_num_samples_gives_a_list():
    gen = tiny_generator()
    assert gen("All:", max_new_tokens=30, seed=1) == gen("All:", max_new_tokens=30, seed=1)
    texts = gen("All:", num_samples=3, max_new_tokens=30, seed=1)
    assert isinstance(texts, list) and len(texts) == 3 and all(t.startswith("All:") for t in texts)


def test_readme_notebook_example_runs_as_written(tmp_path, monkeypatch):
    readme = open(f"{ROOT}/README.md", encoding="utf-8").read()
    block = re.search(r"<!-- notebook-example -->\s*```python\n(.*?)```", readme, re.S).group(1)
    assert len(block.strip().splitlines()) == 3
    gen = tiny_generator()
    out_dir = tmp_path / "out-shakespeare-char"
    save_checkpoint({"model": gen.model.state_dict(), "model_config": asdict(gen.model.config),
                     "tokenizer": gen.tokenizer.to_meta()}, str(out_dir / "ckpt.pt"))
    monkeypatch.chdir(tmp_path)
    printed = []
    exec(compile(block, "README.md", "exec"), {"print": printed.append})
    assert len(printed) == 1 and printed[0].startswith("ROMEO:") and len(printed[0]) > len("ROMEO:")


def test_load_accepts_a_file_or_a_folder(tmp_path):
    gen = tiny_generator()
    save_checkpoint({"model": gen.model.state_dict(), "model_config": asdict(gen.model.config),
                     "tokenizer": gen.tokenizer.to_meta()}, str(tmp_path / "ckpt.pt"))
    a = load(str(tmp_path), device="cpu")("All:", max_new_tokens=10, temperature=0)
    b = load(str(tmp_path / "ckpt.pt"), device="cpu")("All:", max_new_tokens=10, temperature=0)
    assert a == b


def test_weights_are_cast_before_they_move(tmp_path, monkeypatch):
    from dataclasses import asdict
    from checkpoint import save_checkpoint
    from tokenizer import CharTokenizer
    model = GPT(GPTConfig(vocab_size=3, n_layer=1, n_head=2, n_embd=16, block_size=8))
    save_checkpoint({"model": model.state_dict(), "model_config": asdict(model.config),
                     "tokenizer": CharTokenizer("abc").to_meta()}, str(tmp_path / "ckpt.pt"))
    moves, real_to = [], torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moves.append(a) or real_to(self, *a, **k))
    generate.load(str(tmp_path), device="cpu", dtype="bfloat16")
    assert moves == [(torch.bfloat16,), (torch.device("cpu"),)]  # half the bytes cross to a GPU
