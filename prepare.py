"""The data: tokenizers, and text turned into token files for training.

    python prepare.py                                  # download Tiny Shakespeare, characters
    python prepare.py --input my.txt --name mytext     # any text file -> data/mytext/
    python prepare.py --tokenizer gpt2                 # GPT-2 BPE -> data/shakespeare/
    python prepare.py --input 'web/*.jsonl' --name web # a corpus -> data/web/ shards
    python prepare.py --hf_dataset HuggingFaceFW/fineweb-edu --hf_config sample-10BT --name fineweb_edu10B

One text file gives data/NAME/train.bin and val.bin, the first 90% and last 10%
of its tokens (uint16, or uint32 when the vocabulary needs it), and meta.json:
the tokenizer, the token counts, and val_bytes (the val split's UTF-8 bytes, for
bits per byte). A corpus (a folder or glob of .txt, .jsonl and .parquet files, or
a Hugging Face dataset) gives GPT-2 BPE shards of a fixed number of tokens, each
document after GPT-2's <|endoftext|>, tokenized by worker processes: val_000000.bin,
then train_000001.bin and on, listed in meta.json. Either way memory stays bounded
whatever the size of the input.
"""
import argparse
import glob
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
import urllib.request
from collections import deque

import numpy as np

from common import UserError, run_main

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
CHUNK_CHARS = 8 * 1024 * 1024  # characters read and encoded at a time
VAL_FRACTION = 0.1


# --------------------------------------------------------------------------- tokenizers

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


def make_tokenizer(kind, text_sample=None):
    if kind == "char":
        return CharTokenizer.from_text(text_sample)
    if kind == "gpt2":
        return GPT2Tokenizer()
    raise UserError(f"unknown tokenizer {kind!r}; use 'char' or 'gpt2'")


# --------------------------------------------------------------------------- one text file

def download(url, path, offline="pass a local copy: python prepare.py --input PATH/input.txt"):
    """Fetch url to path, via a temporary file so a failed download leaves nothing behind.

    `offline` says what to do instead, in the one-line error of a failed download.
    """
    print(f"downloading {url}", file=sys.stderr)
    tmp = path + ".part"
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
            f.write(r.read())
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise UserError(f"download of {url} failed ({getattr(e, 'reason', None) or e}); with no internet, "
                        f"{offline}") from None
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


# --------------------------------------------------------------------------- a corpus, in shards

CORPUS_SUFFIXES = (".txt", ".jsonl", ".parquet")
TASK_CHARS = 1 << 20  # characters a worker tokenizes at a time: enough to keep IPC a small share


def is_corpus(spec):
    """Whether --input names a corpus (a folder, a glob, a .jsonl or .parquet file) rather than one text file."""
    return os.path.isdir(spec) or glob.has_magic(spec) or spec.endswith((".jsonl", ".parquet"))


def corpus_files(spec):
    """The .txt, .jsonl and .parquet files a folder (searched recursively), a glob or a file names, sorted."""
    if os.path.isdir(spec):
        paths = [os.path.join(root, f) for root, _, names in os.walk(spec) for f in names]
    else:
        paths = glob.glob(spec, recursive=True)
    files = sorted(p for p in paths if p.endswith(CORPUS_SUFFIXES) and os.path.isfile(p))
    if not files:
        raise UserError(f"no .txt, .jsonl or .parquet files in {spec}; give a folder, a glob or a file")
    return files


def split_text(text, size=None):
    """text in pieces of at most about size characters (TASK_CHARS), tokenized as the whole would be.

    A piece ends before a space that stands between two words: GPT-2's BPE starts a
    token at such a space whatever follows, so the pieces' tokens are the text's.
    """
    size, start = size or TASK_CHARS, 0
    while len(text) - start > size:
        cut = text.rfind(" ", start + 1, start + size)
        while cut > start and (text[cut - 1].isspace() or text[cut + 1].isspace()):
            cut = text.rfind(" ", start + 1, cut)
        cut = cut if cut > start else start + size  # no such space: a plain cut
        yield text[start:cut]
        start = cut
    yield text[start:]


def needs(module, extra="data"):
    try:
        return __import__(module)
    except ImportError:
        raise UserError(f"this corpus needs {module}: pip install -e '.[{extra}]'") from None


class Corpus:
    """The documents of a corpus as text pieces, in a fixed order: (starts a document, text, input bytes).

    A file or document that cannot be read (not UTF-8, not JSON, no text field) is
    reported by name and skipped, or stops the run, as `on_error` says.
    """

    def __init__(self, spec=None, hf_dataset=None, hf_config=None, hf_split="train", text_field="text",
                 on_error="stop", hf_revision=None):
        self.hf = (hf_dataset, hf_config, hf_split, hf_revision) if hf_dataset else None
        self.files = [] if self.hf else corpus_files(spec)
        self.text_field, self.on_error = text_field, on_error
        self.total_bytes = sum(os.path.getsize(f) for f in self.files) or None  # unknown for a hub dataset
        self.skipped = 0

    def fingerprint(self):
        """What the corpus is, so that a rerun knows whether finished shards still hold its tokens."""
        files = self.files
        if self.hf and os.path.isdir(self.hf[0]):  # a local dataset: its files say whether it changed
            files = sorted(os.path.join(root, f) for root, _, names in os.walk(self.hf[0]) for f in names)
        stamp = [[os.path.abspath(f), os.path.getsize(f), int(os.path.getmtime(f))] for f in files]
        return {"files": stamp, "hf_dataset": self.hf and [os.path.abspath(self.hf[0])
                if os.path.isdir(self.hf[0]) else self.hf[0], *self.hf[1:]], "text_field": self.text_field}

    def problem(self, where, why):
        if self.on_error == "stop":
            raise UserError(f"{where}: {why}; fix or remove it, or pass --on_error=skip to leave it out")
        print(f"\nskipped {where}: {why}", file=sys.stderr)
        self.skipped += 1

    def pieces(self):
        if self.hf:
            yield from self.hub_pieces()
            return
        for path in self.files:
            try:
                if path.endswith(".txt"):
                    yield from self.txt_pieces(path)
                elif path.endswith(".jsonl"):
                    yield from self.jsonl_pieces(path)
                else:
                    yield from self.parquet_pieces(path)
            except OSError as e:
                self.problem(path, f"cannot be read ({e.strerror or e})")

    def document(self, text, input_bytes):
        if not text:
            return  # an empty document: not even its <|endoftext|>
        for i, piece in enumerate(split_text(text)):
            yield i == 0, piece, input_bytes if i == 0 else 0

    def txt_pieces(self, path):
        try:  # read through once first, so that a file that is not UTF-8 is left out whole
            with open(path, encoding="utf-8") as f:
                while f.read(CHUNK_CHARS):
                    pass
        except UnicodeDecodeError as e:
            self.problem(path, f"not valid UTF-8 ({e.reason})")
            return
        first = True
        for chunk in read_chunks(path):  # one document: the whole file, read in bounded chunks
            for piece in split_text(chunk):
                yield first, piece, len(piece.encode("utf-8"))
                first = False

    def jsonl_pieces(self, path):
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line.decode("utf-8"))[self.text_field]
                    if not isinstance(text, str):
                        raise TypeError
                except UnicodeDecodeError:
                    self.problem(f"{path}:{number}", "not valid UTF-8")
                    continue
                except ValueError:
                    self.problem(f"{path}:{number}", "not a line of JSON")
                    continue
                except (KeyError, TypeError):
                    self.problem(f"{path}:{number}", f"no text in a field {self.text_field!r} (--text_field names it)")
                    continue
                yield from self.document(text, len(line))

    def parquet_pieces(self, path):
        pyarrow = needs("pyarrow")
        parquet = needs("pyarrow.parquet").parquet
        try:
            table = parquet.ParquetFile(path)
        except pyarrow.ArrowException as e:
            self.problem(path, f"not a readable parquet file ({str(e).splitlines()[0][:100]})")
            return
        schema = table.schema_arrow
        if self.text_field not in schema.names or not pyarrow.types.is_string(schema.field(self.text_field).type) \
                and not pyarrow.types.is_large_string(schema.field(self.text_field).type):
            self.problem(path, f"no column of text named {self.text_field!r} (--text_field names it)")
            return
        per_row = os.path.getsize(path) / max(table.metadata.num_rows, 1)
        for batch in table.iter_batches(columns=[self.text_field], batch_size=1024):
            for text in batch.column(0).to_pylist():
                yield from self.document(text or "", per_row)

    def hub_pieces(self):
        """A Hugging Face dataset's rows, streamed: a rerun reads again up to where it stopped."""
        datasets = needs("datasets")
        name, config, split, revision = self.hf
        number = 0
        try:
            for number, row in enumerate(datasets.load_dataset(name, config, split=split, revision=revision,
                                                               streaming=True)):
                text = row.get(self.text_field)
                if not isinstance(text, str):
                    self.problem(f"{name} row {number}", f"no text in a field {self.text_field!r}")
                    continue
                yield from self.document(text, len(text.encode("utf-8")))
        except Exception as e:  # offline, a wrong name, a connection lost midway: whatever the hub client raises
            if isinstance(e, UserError):
                raise
            raise UserError(f"reading the dataset {name} failed at row {number} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:160] if str(e) else ''}); run again to continue from the "
                            "finished shards, or give local files with --input") from None

    def tasks(self):
        """Lists of pieces of about TASK_CHARS characters: a worker's unit of work, in a fixed order."""
        task, chars = [], 0
        for piece in self.pieces():
            task.append(piece)
            chars += len(piece[1])
            if chars >= TASK_CHARS:
                yield task
                task, chars = [], 0
        if task:
            yield task


_encoder = None  # each worker process's own tiktoken encoding


def tokenize_task(task):
    """A task's tokens, each document's after <|endoftext|>, as uint16; and the input bytes it covered."""
    global _encoder
    if _encoder is None:
        _encoder = GPT2Tokenizer().enc
    tokens = []
    for starts, text, _ in task:  # one call a piece: tiktoken's batch call ran at 10 MB/s on one thread, this at 15
        if starts:
            tokens.append(_encoder.eot_token)
        tokens.extend(_encoder.encode_ordinary(text))
    return np.array(tokens, dtype=np.uint16), sum(n for _, _, n in task)


def tokenized(tasks, workers):
    """tokenize_task over tasks, in order, on `workers` processes, with at most two tasks a worker in flight."""
    if workers == 1:
        yield from map(tokenize_task, tasks)
        return
    with multiprocessing.Pool(workers) as pool:
        in_flight = deque()
        for task in tasks:
            in_flight.append(pool.apply_async(tokenize_task, (task,)))
            if len(in_flight) >= 2 * workers:  # bounded: the corpus is never read far ahead
                yield in_flight.popleft().get()
        while in_flight:
            yield in_flight.popleft().get()


class Shards:
    """Fills shards of a fixed number of tokens in order (val_000000.bin, then train_000001.bin, ...),
    each written to a temporary file and renamed, and records in progress.json where the next one starts."""

    def __init__(self, folder, val_tokens, shard_tokens, settings):
        self.folder, self.val_tokens, self.shard_tokens = folder, val_tokens, shard_tokens
        self.progress_path = os.path.join(folder, "progress.json")
        self.settings = settings
        self.done = self.finished_shards()
        self.buffer = np.empty(max(val_tokens, shard_tokens), dtype=np.uint16)
        self.filled = 0

    def finished_shards(self):
        """The shards an earlier run of the same settings finished and that are still whole, in order;
        any other shard in the folder is removed, with a line that says why."""
        done, why = [], None
        try:
            with open(self.progress_path) as f:
                saved = json.load(f)
            if saved["settings"] != self.settings:
                why = "the corpus or the shard sizes differ from the earlier run's"
            else:
                for shard in saved["done"]:
                    path = os.path.join(self.folder, shard["file"])
                    if not os.path.isfile(path) or os.path.getsize(path) != 2 * shard["tokens"]:
                        why = f"{shard['file']} is missing or not whole"
                        break
                    done.append(shard)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError):
            why = "progress.json is damaged"
        kept = {s["file"] for s in done}
        old = [f for f in glob.glob(os.path.join(self.folder, "*_[0-9][0-9][0-9][0-9][0-9][0-9].bin*"))
               if os.path.basename(f) not in kept]
        if why or old:
            print(f"{why or 'progress.json does not list the shard files here'}: tokenizing again "
                  f"{'after ' + done[-1]['file'] if done else 'from the start'}")
        for path in old:
            os.remove(path)
        return done

    def resume_point(self):
        """(task, token offset within it) where the next shard starts; (0, 0) for a fresh start."""
        return tuple(self.done[-1]["next"]) if self.done else (0, 0)

    def add(self, tokens, task, offset=0):
        """Append a task's tokens from `offset` on; full shards are written as they fill."""
        position = 0
        while position < len(tokens):
            target = self.val_tokens if not self.done else self.shard_tokens
            take = min(target - self.filled, len(tokens) - position)
            self.buffer[self.filled:self.filled + take] = tokens[position:position + take]
            self.filled += take
            position += take
            if self.filled == target:
                self.write(next_start=[task, offset + position])

    def write(self, next_start):
        index = len(self.done)
        name = f"{'val' if index == 0 else 'train'}_{index:06d}.bin"
        tmp = os.path.join(self.folder, name + ".tmp")
        self.buffer[:self.filled].tofile(tmp)
        os.replace(tmp, os.path.join(self.folder, name))
        self.done.append({"file": name, "tokens": int(self.filled), "next": next_start})
        self.filled = 0
        self.save()

    def finish(self):
        """Write the last, shorter shard, and mark the corpus done (`next` None)."""
        if self.filled:
            self.write(next_start=None)
        elif self.done:
            self.done[-1]["next"] = None
            self.save()

    def save(self):
        with open(self.progress_path + ".tmp", "w") as f:
            json.dump({"settings": self.settings, "done": self.done}, f)
        os.replace(self.progress_path + ".tmp", self.progress_path)


def tokenize_corpus(corpus, shards, workers):
    """Fill the shards with the corpus's tokens, from where finished shards end."""
    start_task, start_offset = shards.resume_point()
    progress = CorpusProgress(corpus.total_bytes, sum(s["tokens"] for s in shards.done))
    tasks = corpus.tasks()
    for _ in range(start_task):  # read past what finished shards hold, without tokenizing it
        task = next(tasks, None)
        if task is None:
            raise UserError("the corpus ends before the finished shards do: it changed since they were "
                            "written; remove progress.json to tokenize it again from the start")
        progress.advance(0, sum(n for _, _, n in task), counted=False)
    for index, (tokens, input_bytes) in enumerate(tokenized(tasks, workers), start_task):
        offset = start_offset if index == start_task else 0
        shards.add(tokens[offset:], index, offset)
        progress.advance(len(tokens) - offset, input_bytes)
    shards.finish()
    progress.close()


def prepare_corpus(corpus, name, data_root="data", workers=None, shard_tokens=100_000_000, val_tokens=10_000_000):
    """Tokenize a corpus into GPT-2 BPE shards in data_root/name; a rerun continues from finished shards."""
    folder = os.path.join(data_root, name)
    os.makedirs(folder, exist_ok=True)
    workers = workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    tokenizer = GPT2Tokenizer()  # fails here, with its one line, if the BPE files cannot be had
    settings = dict(corpus.fingerprint(), shard_tokens=shard_tokens, val_tokens=val_tokens, task_chars=TASK_CHARS)
    shards = Shards(folder, val_tokens, shard_tokens, settings)
    if shards.done and shards.done[-1]["next"] is None:
        print(f"{folder} holds every shard of this corpus already")
    else:
        if shards.done:
            print(f"continuing after {len(shards.done)} finished shards, up to {shards.done[-1]['file']}")
        if os.path.exists(os.path.join(folder, "meta.json")):
            os.remove(os.path.join(folder, "meta.json"))  # it would describe shards that are about to change
        tokenize_corpus(corpus, shards, workers)
    if len(shards.done) < 2:
        raise UserError(f"the corpus gave {sum(s['tokens'] for s in shards.done):,} tokens, too few for a val shard "
                        f"of {val_tokens:,} and any training; use a larger corpus or a smaller --val_tokens")
    val, *train = [{"file": s["file"], "tokens": s["tokens"]} for s in shards.done]
    meta = dict(tokenizer.to_meta(), dtype="uint16", shards={"val": [val], "train": train},
                train_tokens=sum(s["tokens"] for s in train), val_tokens=val["tokens"],
                val_bytes=count_bytes(os.path.join(folder, val["file"]), np.uint16, tokenizer))
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    skipped = f"; {corpus.skipped} skipped" if corpus.skipped else ""
    print(f"wrote {folder}: {len(train)} train shards ({meta['train_tokens']:,} tokens), val "
          f"({meta['val_tokens']:,} tokens), meta.json{skipped}")
    return meta


class CorpusProgress:
    """A one-line progress bar on stderr: input read, MB/s, tokens, and the time left where the size is known."""

    def __init__(self, total_bytes, tokens):
        self.total, self.tokens, self.done, self.counted = total_bytes, tokens, 0, 0
        self.t0 = self.last = time.time()

    def advance(self, tokens, input_bytes, counted=True):
        self.tokens += tokens
        self.done += input_bytes
        self.counted += input_bytes if counted else 0  # read past on a rerun: not part of the rate
        now = time.time()
        if now - self.last < 0.5:
            return
        self.last = now
        rate = self.counted / max(now - self.t0, 1e-9)
        where = f"{self.done / 1e6:,.0f} MB"
        if self.total:
            left = max(self.total - self.done, 0) / max(rate, 1)
            where = f"{100 * min(self.done / self.total, 1):5.1f}% of {self.total / 1e6:,.0f} MB, eta {left:,.0f}s"
        print(f"\rtokenizing: {where}, {rate / 1e6:.1f} MB/s, {self.tokens:,} tokens   ", end="", file=sys.stderr,
              flush=True)

    def close(self):
        elapsed = time.time() - self.t0
        print(f"\rtokenized {self.counted / 1e6:,.1f} MB in {elapsed:.1f}s ({self.counted / 1e6 / max(elapsed, 1e-9):.1f}"
              f" MB/s), {self.tokens:,} tokens" + " " * 20, file=sys.stderr)


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
