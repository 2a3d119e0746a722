"""Saving and loading checkpoints: atomic writes, safe reads, and exact random state.

Two files live in out_dir: `ckpt.pt`, the model with the best val loss (what
sample.py loads), and `last.pt`, the latest full training state (what
--init_from=resume continues from). Both are written to a temporary file in the
same folder, flushed to disk, then renamed over the old one, so a crash at any
moment leaves the previous file whole (and at most one stray `.tmp` file).
Loading uses torch.load(weights_only=True): tensors and plain containers only,
never arbitrary pickled objects.
"""
import contextlib
import errno
import os
import random

import numpy as np
import torch

from errors import UserError

BEST = "ckpt.pt"
LAST = "last.pt"


def save_checkpoint(state, path):
    """Write state to path atomically: the old file stays whole until the new one is complete."""
    commit_checkpoint(write_pending(state, path), path)


def write_pending(state, path):
    """Write state to a temporary file beside path, flushed to disk; returns its name.

    `commit_checkpoint` puts it in place. Training writes last.pt this way and
    commits it only once the weights it holds have given a finite loss.
    """
    tmp = f"{path}.tmp"  # one name, so a run killed while writing leaves one stray file, not one per try
    with _saving(path, tmp):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    return tmp


def commit_checkpoint(tmp, path):
    """Rename tmp over path (atomic on POSIX and Windows), then make the rename itself durable."""
    with _saving(path, tmp):
        os.replace(tmp, path)
        if os.name == "posix":  # a folder's entries reach the disk with an fsync of the folder
            dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def discard_pending(tmp):
    if tmp and os.path.exists(tmp):
        os.remove(tmp)


@contextlib.contextmanager
def _saving(path, tmp):
    """Turn a failed write into one clear line, removing the partial file; path is never touched."""
    try:
        yield
    except OSError as e:
        try:
            discard_pending(tmp)
        except OSError:
            pass
        folder = os.path.dirname(os.path.abspath(path))
        if e.errno == errno.ENOSPC:
            raise UserError(f"out of disk space while saving {path}; the previous checkpoint is intact. "
                            "Free some space and continue with --init_from=resume") from None
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise UserError(f"cannot write to {folder} ({e.strerror}); choose another --out_dir") from None
        raise UserError(f"could not save {path} ({e.strerror or e}); the previous checkpoint is intact") from None


def check_writable(out_dir):
    """Fail before training starts, not at the first save, when out_dir cannot be written."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write-test{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise UserError(f"out_dir {out_dir} is not writable ({e.strerror}); choose another --out_dir") from None


def load_checkpoint(path, device="cpu"):
    """Read a checkpoint without unpickling arbitrary objects; any bad file is a clear error."""
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}; train one first with python train.py CONFIG")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a refused object, a truncated or foreign file: one clear line each
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        refused = [line for line in lines if "GLOBAL" in line]  # weights_only names what it would have called
        if refused:
            raise UserError(f"{path} holds Python objects, not just tensors ({refused[0]}); it was not written by "
                            "this project and is not loaded, since loading it could run code") from None
        reason = next((line for line in lines if line.startswith("Unsupported")), lines[0] if lines else "")
        reason = reason.split(". ")[0][:120]  # the first sentence says what went wrong
        raise UserError(f"{path} is damaged or not a checkpoint ({type(e).__name__}: {reason}); "
                        "use another checkpoint, or train again") from None
    if not isinstance(state, dict) or not all(k in state for k in ("model", "model_config", "tokenizer")):
        raise UserError(f"{path} is not a checkpoint of this project (it lacks a model, model_config or tokenizer)")
    return state


def check_vocabulary(state, meta, dataset, path, doing):
    """A checkpoint's model reads only the token ids of the vocabulary it was trained on."""
    if state["tokenizer"] != {k: meta.get(k) for k in state["tokenizer"]}:
        raise UserError(f"dataset {dataset} has a different vocabulary from {path}; "
                        f"{doing} on the dataset it was trained on, or start a new out_dir")


def resolve_checkpoint(path, name=BEST):
    """A checkpoint file from a file path or an out_dir."""
    if os.path.isdir(path):
        return os.path.join(path, name)
    return path


def rng_state():
    """Every random generator a training step draws from, in a form weights_only loads."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def load_model(path, device="cpu"):
    """(model in eval mode, tokenizer, checkpoint dict) from a checkpoint file or out_dir."""
    from model import GPTConfig, build_model
    from tokenizer import load_tokenizer
    state = load_checkpoint(resolve_checkpoint(path), device)
    try:
        model = build_model(GPTConfig(**state["model_config"]), state["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{path} does not hold a model this project can build ({str(e).splitlines()[0][:160]})") from None
    return model.to(device).eval(), load_tokenizer(state["tokenizer"]), state
