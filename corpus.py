"""Corpora: folders of .txt, .jsonl and .parquet files, or Hugging Face datasets, tokenized into shards.

    python prepare.py --input 'web/*.jsonl' --name web
    python prepare.py --hf_dataset HuggingFaceFW/fineweb-edu --hf_config sample-10BT --name fineweb_edu10B

Documents are read in a fixed order and tokenized with GPT-2 BPE on worker
processes, each after GPT-2's <|endoftext|>. Tokens fill shards of a fixed size,
uint16: val_000000.bin first, then train_000001.bin and on, listed in meta.json.
progress.json records where each finished shard ends, so a run stopped midway
continues from its finished shards. Memory holds one shard, whatever the corpus's size.
"""
import glob
import json
import multiprocessing
import os
import sys
from collections import deque

import numpy as np

from common import Progress, UserError, atomic_write
from tokenizer import GPT2Tokenizer, count_bytes

CHUNK_CHARS = 8 * 1024 * 1024  # characters read at a time from a text file

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
        atomic_write(os.path.join(self.folder, name), self.buffer[:self.filled].tofile)
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
        record = json.dumps({"settings": self.settings, "done": self.done}).encode()
        atomic_write(self.progress_path, lambda f: f.write(record))


def tokenize_corpus(corpus, shards, workers):
    """Fill the shards with the corpus's tokens, from where finished shards end."""
    start_task, start_offset = shards.resume_point()
    progress = Progress(corpus.total_bytes or 0, "tokenizing")
    progress.tokens = sum(s["tokens"] for s in shards.done)
    tasks = corpus.tasks()
    for _ in range(start_task):  # read past what finished shards hold, without tokenizing it
        task = next(tasks, None)
        if task is None:
            raise UserError("the corpus ends before the finished shards do: it changed since they were "
                            "written; remove progress.json to tokenize it again from the start")
        progress.advance(sum(n for _, _, n in task), counted=False)
    for index, (tokens, input_bytes) in enumerate(tokenized(tasks, workers), start_task):
        offset = start_offset if index == start_task else 0
        shards.add(tokens[offset:], index, offset)
        progress.advance(input_bytes, tokens=len(tokens) - offset)
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
    atomic_write(os.path.join(folder, "meta.json"), lambda f: f.write(json.dumps(meta, indent=1).encode()))
    skipped = f"; {corpus.skipped} skipped" if corpus.skipped else ""
    print(f"wrote {folder}: {len(train)} train shards ({meta['train_tokens']:,} tokens), val "
          f"({meta['val_tokens']:,} tokens), meta.json{skipped}")
    return meta
