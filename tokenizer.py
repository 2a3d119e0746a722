"""Tokens: the character and GPT-2 BPE tokenizers, and the token files a prepared dataset is made of.

    from tokenizer import CharTokenizer, load_dataset
    tok = CharTokenizer.from_text(text); ids = tok.encode("ROMEO:"); tok.decode(ids)
    meta, splits = load_dataset("data", "shakespeare_char")    # splits["train"]: memory-mapped token files

A prepared dataset is a folder data/NAME/ holding meta.json (the tokenizer, the
token dtype, the counts) and its tokens: train.bin and val.bin for one text
(prepare.py), or the shards that meta.json lists for a corpus (corpus.py).
"""
import hashlib
import json
import os

import numpy as np

from common import UserError

# Where tiktoken downloads GPT-2's BPE files from (tiktoken_ext/openai_public.py). Before
# downloading, it looks for TIKTOKEN_CACHE_DIR/<sha1 hex of the URL>, so copies placed
# there under those names work with no internet (tiktoken checks their sha256).
GPT2_BPE_URLS = {
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
}


def tiktoken_cache_names():
    """{file name: the name tiktoken's cache gives it}, e.g. 'vocab.bpe': '6d1cbeee...'."""
    return {name: hashlib.sha1(url.encode()).hexdigest() for name, url in GPT2_BPE_URLS.items()}


class CharTokenizer:
    """One token per character of a fixed vocabulary (the sorted characters of the training text)."""
    kind = "char"

    def __init__(self, chars):
        self.chars = list(chars)
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    @classmethod
    def from_text(cls, text):
        return cls(sorted(set(text)))

    def encode(self, text):
        unknown = sorted({ch for ch in text if ch not in self.stoi})
        if unknown:
            shown = ", ".join(repr(ch) for ch in unknown[:10])
            raise UserError(f"text has characters not in the vocabulary: {shown}; use only characters from the training text")
        return [self.stoi[ch] for ch in text]

    def encode_array(self, text, dtype):
        """encode() for long texts: a vectorised lookup of code points, as a numpy array."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.array([ord(ch) for ch in self.chars], dtype=np.uint32)  # sorted, as the vocabulary is
        ids = np.searchsorted(table, codes)
        found = table[np.minimum(ids, len(table) - 1)] == codes
        if not found.all():
            self.encode(text)  # raises with the unknown characters named
        return ids.astype(dtype)

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)

    def decode_bytes(self, ids):
        return self.decode(ids).encode("utf-8")

    def to_meta(self):
        return {"tokenizer": self.kind, "vocab_size": self.vocab_size, "chars": self.chars}


class GPT2Tokenizer:
    """GPT-2's 50,257-token byte-pair encoding, from tiktoken."""
    kind = "gpt2"

    def __init__(self):
        import tiktoken
        try:
            self.enc = tiktoken.get_encoding("gpt2")
        except Exception as e:  # offline, tiktoken raises whatever its HTTP client raises
            names = tiktoken_cache_names()
            raise UserError(
                f"could not load the GPT-2 BPE files ({type(e).__name__}); tiktoken downloads them on first use. "
                f"Offline, set TIKTOKEN_CACHE_DIR to a folder holding vocab.bpe renamed {names['vocab.bpe']} "
                f"and encoder.json renamed {names['encoder.json']} (README: 'GPT-2 BPE offline')") from None
        self.eot_token = self.enc.eot_token
        self.vocab_size = self.enc.n_vocab

    def encode(self, text):
        return self.enc.encode_ordinary(text)

    def encode_array(self, text, dtype):
        return np.array(self.encode(text), dtype=dtype)

    def decode(self, ids):
        return self.enc.decode(list(ids), errors="replace")

    def decode_bytes(self, ids):
        """The bytes of the tokens: a character's bytes may be split across tokens."""
        return self.enc.decode_bytes(list(ids))

    def to_meta(self):
        return {"tokenizer": self.kind, "vocab_size": self.vocab_size}


def load_tokenizer(meta):
    """The tokenizer a meta dict (from meta.json or a checkpoint) describes."""
    kind = meta.get("tokenizer")
    if kind == "char":
        return CharTokenizer(meta["chars"])
    if kind == "gpt2":
        return GPT2Tokenizer()
    raise UserError(f"unknown tokenizer kind {kind!r} in the dataset or checkpoint metadata")


def count_bytes(path, dtype, tokenizer, chunk=1024 * 1024):
    """The UTF-8 bytes a token file decodes to, a chunk of tokens at a time (bounded memory).

    Both tokenizers decode token by token to whole bytes, so chunk edges cannot change the count.
    """
    n = 0
    with open(path, "rb") as f:
        while len(tokens := np.fromfile(f, dtype=dtype, count=chunk)):
            n += len(tokenizer.decode_bytes(tokens.tolist()))
    return n


# --------------------------------------------------------------------------- a prepared dataset on disk

def load_dataset(data_root, name):
    """The dataset's metadata and its two token splits, each a list of memory-mapped files:
    train.bin and val.bin for one text, the shards of a corpus."""
    folder = os.path.join(data_root, name)
    meta_path = os.path.join(folder, "meta.json")
    if not os.path.isfile(meta_path):
        raise UserError(f"no prepared data in {folder}; run python prepare.py "
                        f"(or python prepare.py --input FILE --name {name})")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    splits = {}
    for split in ("train", "val"):
        files = [s["file"] for s in meta["shards"][split]] if "shards" in meta else [f"{split}.bin"]
        splits[split] = []
        for file in files:
            path = os.path.join(folder, file)
            if not os.path.isfile(path):
                raise UserError(f"{path} is missing; run python prepare.py again")
            splits[split].append(np.memmap(path, dtype=np.dtype(meta.get("dtype", "uint16")), mode="r"))
    return meta, splits


def check_long_enough(shards, block_size, what):
    """A window is block_size + 1 tokens (inputs and their next tokens): some shard must hold one."""
    if max(len(s) for s in shards) < block_size + 1:
        raise UserError(f"{what} has {sum(len(s) for s in shards):,} tokens, too few for block_size {block_size}; "
                        "use a longer text or a smaller --block_size")


def bytes_per_token(meta):
    """UTF-8 bytes per token of the val split, for bits per byte; None for data prepared without them."""
    return meta["val_bytes"] / meta["val_tokens"] if meta.get("val_bytes") else None
