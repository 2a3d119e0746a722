"""Checkpoints: atomic writes, safe reads, exact random state, and what resuming checks.

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
from dataclasses import asdict, replace

import numpy as np
import torch

from common import UserError
from model import GPTConfig, build_model
from prepare import load_tokenizer

BEST = "ckpt.pt"
LAST = "last.pt"
# Model settings that may differ on resume: they change the run, not the weights' shapes.
RESUMABLE_MODEL_KEYS = ("dropout", "attention")
# What last.pt holds besides the model; ckpt.pt, the best model for sampling, has none of it.
TRAINING_KEYS = ("optimizer", "iter_num", "best_val_loss", "rng", "train_config", "tokenizer")


# --------------------------------------------------------------------------- writing

def save_checkpoint(state, path):
    """Write state to path atomically: the old file stays whole until the new one is complete."""
    commit_checkpoint(write_pending(state, path), path)


def write_pending(state, path):
    """Write state to a temporary file beside path, flushed to disk; returns its name."""
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


class LastCheckpoint:
    """out_dir/last.pt, put in place only once the weights it holds have given a finite loss.

    Training writes it to its temporary file; an evaluation, or the next step's
    loss, proves the weights, and `commit` renames it over the previous last.pt.
    A loss that turns NaN discards it: last.pt keeps the last good weights.
    """

    def __init__(self, path, step=None):
        self.path = path
        self.step = step  # the iteration of the last.pt in place, None before the first
        self.pending = None  # (temporary file, its iteration)

    def write(self, state, proven):
        self.pending = (write_pending(state, self.path), state["iter_num"])
        if proven:
            self.commit()

    def commit(self):
        if self.pending:
            commit_checkpoint(self.pending[0], self.path)
            self.step, self.pending = self.pending[1], None

    def discard(self):
        if self.pending:
            discard_pending(self.pending[0])
            self.pending = None


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


# --------------------------------------------------------------------------- reading

def load_checkpoint(path):
    """Read a checkpoint into CPU memory, without unpickling arbitrary objects; a bad file is a clear error.

    Always the CPU, whatever device the run uses: the random generators' states
    must be CPU tensors, and the model moves to its device once built.
    """
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}; train one first with python train.py CONFIG")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
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
    return os.path.join(path, name) if os.path.isdir(path) else path


def model_from(state, path, config=None):
    """The model a checkpoint's weights fill, on the CPU; a mismatch is one clear line."""
    try:
        return build_model(config or GPTConfig(**state["model_config"]), state["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{path} does not hold a model this project can build "
                        f"({str(e).splitlines()[0][:160]})") from None


def load_model(path):
    """(model on the CPU in eval mode, tokenizer, checkpoint dict) from a checkpoint file or out_dir."""
    path = resolve_checkpoint(path)
    state = load_checkpoint(path)
    return model_from(state, path).eval(), load_tokenizer(state["tokenizer"]), state


# --------------------------------------------------------------------------- random state

def rng_state(device):
    """Every random generator a training step on `device` draws from, in a form weights_only loads."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":  # this process's GPU only: another machine may see other GPUs
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state, device):
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"].cpu())  # generators take CPU byte tensors only
    cuda = state.get("cuda")
    if isinstance(cuda, list):  # written by earlier versions: one state per GPU the process saw
        index = device.index or 0
        cuda = cuda[index] if index < len(cuda) else None
    if device.type == "cuda" and cuda is not None:
        torch.cuda.set_rng_state(cuda.cpu(), device)
    if device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"].cpu())


# --------------------------------------------------------------------------- resuming

def load_resume_state(cfg, model_cfg, meta):
    """(model with the saved weights, on the CPU; the rest of last.pt) for --init_from=resume.

    Settings that shape the weights must be the saved run's; the others (max_iters,
    learning rate, eval cadence, dropout, ...) may change.
    """
    path = os.path.join(cfg.out_dir, LAST)
    state = load_checkpoint(path)
    missing = [k for k in TRAINING_KEYS if k not in state]
    if missing:
        raise UserError(f"{path} holds no training state to resume from (no {', '.join(missing)}); "
                        "start again with --init_from=scratch, or resume from a last.pt that train.py wrote")
    try:
        saved = GPTConfig(**state["model_config"])
    except (TypeError, ValueError) as e:
        raise UserError(f"{path} has a model config this version cannot build ({e})") from None
    changed = [k for k in asdict(saved) if k not in RESUMABLE_MODEL_KEYS + ("vocab_size",)
               and getattr(saved, k) != getattr(model_cfg, k)]
    if changed:
        diffs = ", ".join(f"{k} {getattr(saved, k)!r} -> {getattr(model_cfg, k)!r}" for k in changed)
        raise UserError(f"cannot resume with a different model shape ({diffs}); "
                        "use the settings of the saved run, or a new out_dir")
    check_vocabulary(state, meta, cfg.dataset, path, "resume")
    if cfg.max_iters < state["iter_num"]:
        raise UserError(f"max_iters {cfg.max_iters} is below iteration {state['iter_num']} of {path}; "
                        "resume with a larger --max_iters")
    config = replace(saved, **{k: getattr(model_cfg, k) for k in RESUMABLE_MODEL_KEYS})
    model = model_from(state, path, config)
    del state["model"]  # the model holds the weights now, not two copies
    return model, state


def report_changes(cfg, model_cfg, state):
    """Print the settings that differ from the saved run's, which resuming allows."""
    saved = {**state["train_config"], **state["model_config"]}
    now = {**asdict(cfg), **asdict(model_cfg)}
    changes = [f"{k} {saved[k]!r} -> {v!r}" for k, v in now.items()
               if k in saved and k != "init_from" and saved[k] != v]
    if changes:
        print("resuming with changed settings: " + ", ".join(changes))


def restore_optimizer(state, optimizer, scaler, path, optimizer_name):
    """Load the saved optimizer (and gradient scaler) state into this run's optimizer."""
    saved_name = state.get("train_config", {}).get("optimizer", "adamw")
    if saved_name != optimizer_name:
        raise UserError(f"{path} was trained with optimizer={saved_name!r}, and its state cannot serve "
                        f"{optimizer_name!r}; resume with --optimizer={saved_name}")
    # Saved groups carry settings of the run that saved them; these stay this run's: the
    # kernel (fused AdamW takes GradScaler's scale inside its step, and a group flagged
    # unfused would make scaler.step fail), and each group's share of the learning rate.
    kept = [{k: group[k] for k in ("fused", "foreach", "lr_scale") if k in group} for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state["optimizer"])
        for group, settings in zip(optimizer.param_groups, kept):
            group.update(settings)
            for p in group["params"]:
                pad_rows(optimizer_state(optimizer, p), p)
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"the optimizer state in {path} does not fit the model ({e}); "
                        "it is damaged or was not written by train.py") from None


def optimizer_state(optimizer, p):
    """The state dict an optimizer (or one of a set) keeps for parameter p."""
    for opt in getattr(optimizer, "optimizers", {"": optimizer}).values():
        if p in opt.state:
            return opt.state[p]
    return {}


def pad_rows(state, p):
    """Zero rows added to state tensors shorter than p: the moments of an embedding saved before
    vocabularies were padded. Padded rows never get a gradient, so zero is what they would hold."""
    for key, value in state.items():
        if torch.is_tensor(value) and value.dim() == p.dim() and value.shape != p.shape:
            if value.shape[1:] != p.shape[1:] or value.shape[0] > p.shape[0]:
                raise ValueError(f"state {key!r} of shape {tuple(value.shape)} for a parameter of {tuple(p.shape)}")
            state[key] = torch.cat([value, value.new_zeros(p.shape[0] - value.shape[0], *p.shape[1:])])


def rank_rng(state, rank, world_size):
    """The random state this rank saved, or None when the run was saved by another number of processes.

    Then the batches cannot continue as before anyway; each rank starts new streams instead.
    """
    if len(state["rng"]) != world_size:
        return None
    return state["rng"][rank]
