"""Turn a text file into token files for training.

    python prepare.py                                  # download Tiny Shakespeare, characters
    python prepare.py --input my.txt --name mytext     # any text file -> data/mytext/
    python prepare.py --tokenizer gpt2                 # GPT-2 BPE -> data/shakespeare/

Writes data/NAME/train.bin and val.bin (the first 90% and last 10% of the tokens,
uint16, or uint32 when the vocabulary needs it) and meta.json (the tokenizer, the
token counts, and val_bytes: the UTF-8 bytes of the val split, for bits per byte).
Reads and encodes in chunks, so a file of any size fits in bounded memory.
"""
import argparse
import json
import os
import shutil
import sys
import time
import urllib.request

import numpy as np

from common import UserError, run_main
from tokenizer import make_tokenizer

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
CHUNK_CHARS = 8 * 1024 * 1024  # characters read and encoded at a time
VAL_FRACTION = 0.1


def download(url, path):
    """Fetch url to path, via a temporary file so a failed download leaves nothing behind."""
    print(f"downloading {url}")
    tmp = path + ".part"
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
            f.write(r.read())
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise UserError(f"download of {url} failed ({e}); with no internet, pass a local copy: "
                        "python prepare.py --input PATH/input.txt") from None
    os.replace(tmp, path)


def read_chunks(path):
    """Yield the text in pieces of about CHUNK_CHARS that end at a newline, so no word is cut in two.

    A piece with no newline ends before its last space instead (GPT-2's BPE joins a
    space to the word after it), so even a file of one long line is read in bounded pieces.
    """
    with open(path, encoding="utf-8") as f:
        carry = ""
        while True:
            block = f.read(CHUNK_CHARS)
            if not block:
                break
            text = carry + block
            cut = text.rfind("\n") + 1
            if cut == 0:
                cut = max(text.rfind(" "), 0) or len(text)
            carry = text[cut:]
            yield text[:cut]
        if carry:
            yield carry


class Progress:
    """A one-line progress bar on stderr, by bytes of the input read."""

    def __init__(self, total_bytes, label):
        self.total, self.label, self.done = max(total_bytes, 1), label, 0
        self.t0 = time.time()

    def advance(self, n_bytes):
        self.done += n_bytes
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(30 * frac)
        rate = self.done / max(time.time() - self.t0, 1e-9) / 1e6
        print(f"\r{self.label} [{bar:<30}] {100 * frac:5.1f}% {rate:6.1f} MB/s", end="", file=sys.stderr, flush=True)

    def close(self):
        print(file=sys.stderr)


def character_set(path):
    """Every distinct character of the file, read in chunks."""
    chars = set()
    progress = Progress(os.path.getsize(path), "scanning")
    for chunk in read_chunks(path):
        chars.update(chunk)
        progress.advance(len(chunk.encode("utf-8")))
    progress.close()
    return "".join(sorted(chars))


def encode_file(path, tokenizer, out_path, dtype):
    """Encode the file chunk by chunk into a flat binary of token ids; return the count."""
    n = 0
    progress = Progress(os.path.getsize(path), "encoding")
    with open(out_path, "wb") as out:
        for chunk in read_chunks(path):
            ids = tokenizer.encode_array(chunk, dtype)
            ids.tofile(out)
            n += len(ids)
            progress.advance(len(chunk.encode("utf-8")))
    progress.close()
    return n


def split_tokens(all_path, n, dtype, out_dir):
    """Make the first 90% of the tokens train.bin.tmp and the rest val.bin.tmp.

    The tail is copied out and cut off, then the file is renamed: the train split,
    the bulk of the data, is never copied. Plain reads keep memory bounded (a
    memory map of a large file would count toward the resident set).
    """
    n_train = int(n * (1 - VAL_FRACTION))
    n_val = n - n_train
    if n_train < 2 or n_val < 2:
        raise UserError(f"the text has only {n} tokens: too short to split into train and val; use a longer text")
    with open(all_path, "r+b") as tokens:
        tokens.seek(n_train * np.dtype(dtype).itemsize)
        with open(os.path.join(out_dir, "val.bin.tmp"), "wb") as val:
            shutil.copyfileobj(tokens, val, 16 * 1024 * 1024)
        tokens.truncate(n_train * np.dtype(dtype).itemsize)
    os.replace(all_path, os.path.join(out_dir, "train.bin.tmp"))
    return n_train, n_val


def count_bytes(path, dtype, tokenizer, chunk=1024 * 1024):
    """The UTF-8 bytes a token file decodes to, a chunk of tokens at a time (bounded memory).

    Both tokenizers decode token by token to whole bytes, so chunk edges cannot change the count.
    """
    n = 0
    with open(path, "rb") as f:
        while len(tokens := np.fromfile(f, dtype=dtype, count=chunk)):
            n += len(tokenizer.decode_bytes(tokens.tolist()))
    return n


def prepare(input_path, name, tokenizer_kind, data_root="data"):
    out_dir = os.path.join(data_root, name)
    os.makedirs(out_dir, exist_ok=True)
    if input_path is None:
        input_path = os.path.join(out_dir, "input.txt")
        if not os.path.exists(input_path):
            download(SHAKESPEARE_URL, input_path)
    if not os.path.isfile(input_path):
        raise UserError(f"input file {input_path} not found; pass a text file with --input PATH")
    try:
        sample = character_set(input_path) if tokenizer_kind == "char" else None
    except UnicodeDecodeError:
        raise UserError(f"{input_path} is not UTF-8 text; convert it first (e.g. iconv -t utf-8)") from None
    tokenizer = make_tokenizer(tokenizer_kind, sample)
    dtype = np.uint16 if tokenizer.vocab_size <= 2 ** 16 else np.uint32
    all_path = os.path.join(out_dir, "all.bin.tmp")
    try:
        n = encode_file(input_path, tokenizer, all_path, dtype)
        n_train, n_val = split_tokens(all_path, n, dtype, out_dir)
    finally:
        if os.path.exists(all_path):
            os.remove(all_path)
    # Only now replace the old files, so a failure above leaves a previous dataset intact.
    for split in ("train", "val"):
        os.replace(os.path.join(out_dir, f"{split}.bin.tmp"), os.path.join(out_dir, f"{split}.bin"))
    # val_bytes / val_tokens turns a loss per token into bits per byte, comparable across tokenizers.
    val_bytes = count_bytes(os.path.join(out_dir, "val.bin"), dtype, tokenizer)
    meta = dict(tokenizer.to_meta(), dtype=np.dtype(dtype).name, train_tokens=n_train, val_tokens=n_val,
                val_bytes=val_bytes)
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, ensure_ascii=False)
    print(f"{input_path}: {os.path.getsize(input_path):,} bytes -> {n:,} {tokenizer_kind} tokens, "
          f"vocabulary {tokenizer.vocab_size:,}")
    print(f"wrote {out_dir}/train.bin ({n_train:,} tokens), val.bin ({n_val:,} tokens), meta.json")
    return meta


def main(argv=None):
    p = argparse.ArgumentParser(description="Tokenize a text file into data/NAME/{train,val}.bin and meta.json.")
    p.add_argument("--input", help="a local UTF-8 text file (default: download Tiny Shakespeare)")
    p.add_argument("--name", help="dataset folder under data/ (default: shakespeare_char, or shakespeare for gpt2)")
    p.add_argument("--tokenizer", choices=("char", "gpt2"), default="char",
                   help="char: one token per character; gpt2: GPT-2 BPE via tiktoken")
    p.add_argument("--data_root", default="data", help="where dataset folders live (default: data)")
    args = p.parse_args(argv)
    name = args.name or ("shakespeare_char" if args.tokenizer == "char" else "shakespeare")
    prepare(args.input, name, args.tokenizer, args.data_root)


if __name__ == "__main__":
    run_main(main)
