"""Continuing a stopped run from out_dir/last.pt: what must match, what may change, what is restored.

    python train.py config/shakespeare_char_cpu.py --init_from=resume

Settings that shape the weights must be the saved run's; the others (max_iters,
learning rate, eval cadence, ...) may change, and a resumed run names them. With
the same settings, the resumed run takes exactly the steps the stopped one would
have taken: the model, the optimizer, the iteration, the best val loss and every
random generator (torch's, numpy's, python's, the batch samplers') come back.
"""
import os
from dataclasses import asdict, replace

from checkpoint import LAST, check_vocabulary, load_checkpoint
from errors import UserError
from model import GPTConfig, build_model

# Model settings that may differ on resume: they change the run, not the weights' shapes.
RESUMABLE_MODEL_KEYS = ("dropout", "attention")
# What last.pt holds besides the model; ckpt.pt, the best model for sampling, has none of it.
TRAINING_KEYS = ("optimizer", "iter_num", "best_val_loss", "rng", "train_config", "tokenizer")


def load_resume_state(cfg, model_cfg, meta, device):
    """(model with the saved weights, the rest of last.pt) for --init_from=resume."""
    path = os.path.join(cfg.out_dir, LAST)
    state = load_checkpoint(path, device)
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
    model = build_model(replace(saved, **{k: getattr(model_cfg, k) for k in RESUMABLE_MODEL_KEYS})).to(device)
    try:
        model.load_state_dict(state.pop("model"))  # pop: the model holds the weights now, not two copies
    except RuntimeError as e:
        raise UserError(f"{path} has weights that do not fit its own model config "
                        f"({str(e).splitlines()[0][:160]}); it is damaged or was not written by train.py") from None
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
    saved_name = state.get("train_config", {}).get("optimizer", "adamw")
    if saved_name != optimizer_name:
        raise UserError(f"{path} was trained with optimizer={saved_name!r}, and its state cannot serve "
                        f"{optimizer_name!r}; resume with --optimizer={saved_name}")
    # Saved groups carry the kernel flags of the optimizer that saved them. The kernel must
    # stay the one this optimizer was built with: fused AdamW takes GradScaler's scale
    # inside its step, and a group flagged unfused would make scaler.step fail.
    kernels = [{k: group[k] for k in ("fused", "foreach") if k in group} for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state["optimizer"])
        for group, kernel in zip(optimizer.param_groups, kernels):
            group.update(kernel)
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"the optimizer state in {path} does not fit the model ({e}); "
                        "it is damaged or was not written by train.py") from None


def rank_rng(state, rank, world_size):
    """The random state this rank saved, or None when the run was saved by another number of processes.

    Then the batches cannot continue as before anyway; each rank starts new streams instead.
    """
    if len(state["rng"]) != world_size:
        return None
    return state["rng"][rank]
