"""Prepare a dataset: a text file (or a corpus) in, token files out, in data/NAME/.

    python prepare.py                                  # download Tiny Shakespeare, characters
    python prepare.py --input my.txt --name mytext     # any UTF-8 text file -> data/mytext/
    python prepare.py --tokenizer gpt2                 # GPT-2 BPE -> data/shakespeare/
    python prepare.py --input 'web/*.jsonl' --name web # a corpus -> data/web/ shards (corpus.py)

One text file gives train.bin and val.bin, the first 90% and last 10% of its
tokens (uint16, or uint32 when the vocabulary needs it), and meta.json: the
tokenizer, the token counts, and val_bytes (the val split's UTF-8 bytes, for bits
per byte). The text is read in chunks, so memory stays bounded, and an old dataset
is replaced only once the new one is complete.
"""
import argparse
import json
import os
import shutil

import numpy as np

from common import Progress, UserError, atomic_write, commit, discard, download, run_main, write_pending
from corpus import Corpus, is_corpus, prepare_corpus, read_chunks
from tokenizer import CharTokenizer, GPT2Tokenizer, count_bytes

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
VAL_FRACTION = 0.1


def character_set(path):
    """Every distinct character of the file, read in chunks."""
    chars, progress = set(), Progress(os.path.getsize(path), "scanning")
    for chunk in read_chunks(path):
        chars.update(chunk)
        progress.advance(len(chunk.encode("utf-8")))
    progress.close()
    return "".join(sorted(chars))


def encode_file(path, tokenizer, out, dtype):
    """Encode the text file chunk by chunk into the open binary file `out`, a flat array of token ids."""
    progress = Progress(os.path.getsize(path), "encoding")
    for chunk in read_chunks(path):
        tokenizer.encode_array(chunk, dtype).tofile(out)
        progress.advance(len(chunk.encode("utf-8")))
    progress.close()


def prepare(input_path, name, tokenizer_kind, data_root="data"):
    """Tokenize one text file (Tiny Shakespeare, downloaded, if None) into data_root/name; returns meta.json's dict."""
    out_dir = os.path.join(data_root, name)
    if input_path is None:
        input_path = os.path.join(out_dir, "input.txt")
        if not os.path.exists(input_path):
            download(SHAKESPEARE_URL, input_path, offline="pass a local copy: python prepare.py --input PATH/input.txt")
    if not os.path.isfile(input_path):
        raise UserError(f"input file {input_path} not found; pass a text file with --input PATH")
    try:
        tokenizer = CharTokenizer(character_set(input_path)) if tokenizer_kind == "char" else GPT2Tokenizer()
    except UnicodeDecodeError:
        raise UserError(f"{input_path} is not UTF-8 text; convert it first (e.g. iconv -t utf-8)") from None
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 2 ** 16 else np.uint32)
    train_path, val_path = os.path.join(out_dir, "train.bin"), os.path.join(out_dir, "val.bin")
    # Every token goes to train.bin's temporary file; the last tenth is copied out to val.bin's and
    # cut off, so the bulk of the data is written once. Nothing in out_dir changes until both are whole.
    train_tmp = write_pending(train_path, lambda f: encode_file(input_path, tokenizer, f, dtype))
    n = os.path.getsize(train_tmp) // dtype.itemsize
    n_train = int(n * (1 - VAL_FRACTION))
    try:
        if n_train < 2 or n - n_train < 2:
            raise UserError(f"the text has only {n} tokens: too short to split into train and val; use a longer text")
        with open(train_tmp, "r+b") as tokens:
            tokens.seek(n_train * dtype.itemsize)
            val_tmp = write_pending(val_path, lambda f: shutil.copyfileobj(tokens, f, 16 << 20))
            tokens.truncate(n_train * dtype.itemsize)
            os.fsync(tokens.fileno())
    except BaseException:
        discard(train_tmp)
        raise
    # val_bytes / val_tokens turns a loss per token into bits per byte, comparable across tokenizers.
    meta = dict(tokenizer.to_meta(), dtype=dtype.name, train_tokens=n_train, val_tokens=n - n_train,
                val_bytes=count_bytes(val_tmp, dtype, tokenizer))
    commit(train_tmp, train_path)
    commit(val_tmp, val_path)
    atomic_write(os.path.join(out_dir, "meta.json"), lambda f: f.write(json.dumps(meta, ensure_ascii=False).encode()))
    print(f"{input_path}: {os.path.getsize(input_path):,} bytes -> {n:,} {tokenizer.kind} tokens, "
          f"vocabulary {tokenizer.vocab_size:,}")
    print(f"wrote {out_dir}/train.bin ({n_train:,} tokens), val.bin ({n - n_train:,} tokens), meta.json")
    return meta


def main(argv=None):
    p = argparse.ArgumentParser(description="Tokenize a text file into data/NAME/{train,val}.bin, or a corpus "
                                "into GPT-2 BPE shards, with meta.json.")
    p.add_argument("--input", help="a UTF-8 text file (default: download Tiny Shakespeare), or a corpus: a folder, "
                   "a glob, or .jsonl / .parquet files")
    p.add_argument("--name", help="dataset folder under data/ (default: shakespeare_char, or shakespeare for gpt2)")
    p.add_argument("--tokenizer", choices=("char", "gpt2"), default=None,
                   help="char: one token per character (one text file only); gpt2: GPT-2 BPE via tiktoken "
                        "(default: char for a text file, gpt2 for a corpus)")
    p.add_argument("--data_root", default="data", help="where dataset folders live (default: data)")
    corpus = p.add_argument_group("corpora")
    corpus.add_argument("--hf_dataset", help="a Hugging Face dataset by name (or a local folder), streamed")
    corpus.add_argument("--hf_config", help="its configuration, e.g. sample-10BT")
    corpus.add_argument("--hf_split", default="train")
    corpus.add_argument("--hf_revision", help="a commit or tag of the dataset, so that a rerun reads the same rows")
    corpus.add_argument("--text_field", default="text", help="the field holding the text in .jsonl, .parquet, datasets")
    corpus.add_argument("--workers", type=int, default=None, help="tokenizing processes (default: every core)")
    corpus.add_argument("--shard_tokens", type=int, default=100_000_000, help="tokens per train shard")
    corpus.add_argument("--val_tokens", type=int, default=10_000_000, help="tokens of the val shard, the first")
    corpus.add_argument("--on_error", choices=("stop", "skip"), default="stop",
                        help="a file or document that cannot be read: stop with one line, or report and skip it")
    args = p.parse_args(argv)
    if args.hf_dataset or (args.input and is_corpus(args.input)):
        if args.tokenizer == "char":
            raise UserError("a corpus is tokenized with GPT-2 BPE (--tokenizer gpt2); characters need one text file")
        if min(args.shard_tokens, args.val_tokens) < 1 or (args.workers is not None and args.workers < 1):
            raise UserError("--shard_tokens, --val_tokens and --workers must be at least 1")
        source = Corpus(args.input, args.hf_dataset, args.hf_config, args.hf_split, args.text_field, args.on_error,
                        args.hf_revision)
        prepare_corpus(source, args.name or "corpus", args.data_root, args.workers, args.shard_tokens, args.val_tokens)
        return
    tokenizer = args.tokenizer or "char"
    prepare(args.input, args.name or ("shakespeare_char" if tokenizer == "char" else "shakespeare"), tokenizer,
            args.data_root)


if __name__ == "__main__":
    run_main(main)
