"""Train a GPT on a prepared dataset.

    python train.py config/shakespeare_char_cpu.py
    python train.py config/shakespeare_char.py --max_iters=100 --device=cpu
    python train.py config/shakespeare_char_cpu.py --init_from=resume     # carry on from out_dir/last.pt
    torchrun --standalone --nproc_per_node=4 train.py config/shakespeare_char.py --gradient_accumulation_steps=4

`python train.py --help` lists every setting. One flat loop: evaluate, save,
take an optimizer step; the last step always evaluates and saves.
"""
import json
import math
import os
import sys
import time
from dataclasses import asdict, replace

import numpy as np
import torch
import torch.nn.functional as F

import distributed
from checkpoint import (BEST, LAST, check_vocabulary, check_writable, commit_checkpoint, discard_pending,
                        load_model, rng_state, save_checkpoint, set_rng_state, write_pending)
from device import autocast, pick_device, pick_dtype
from errors import UserError, run_main
from metrics import MetricsLog, format_figures, loss_figures, start_wandb
from model import build_model
from optimizers import build_optimizer
from plot import TrainingPlot
from resume import load_resume_state, rank_rng, report_changes, restore_optimizer
from settings import help_text, load_settings
from throughput import flops_per_token, mfu, peak_flops

def get_lr(step, cfg):
    """Linear warmup to learning_rate, cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    if step >= cfg.lr_decay_iters:
        return cfg.min_lr
    progress = (step - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def load_dataset(cfg):
    """The dataset's metadata and its two token splits, memory-mapped."""
    folder = os.path.join(cfg.data_root, cfg.dataset)
    meta_path = os.path.join(folder, "meta.json")
    if not os.path.isfile(meta_path):
        raise UserError(f"no prepared data in {folder}; run python prepare.py "
                        f"(or python prepare.py --input FILE --name {cfg.dataset})")
    with open(meta_path) as f:
        meta = json.load(f)
    splits = {}
    for split in ("train", "val"):
        path = os.path.join(folder, f"{split}.bin")
        if not os.path.isfile(path):
            raise UserError(f"{path} is missing; run python prepare.py again")
        splits[split] = np.memmap(path, dtype=np.dtype(meta.get("dtype", "uint16")), mode="r")
    return meta, splits


class Batches:
    """Random windows of block_size + 1 tokens from one split: inputs and next-token targets."""

    def __init__(self, data, block_size, batch_size, device, generator):
        self.data, self.block_size, self.batch_size = data, block_size, batch_size
        self.device, self.generator = device, generator

    def sample(self):
        T = self.block_size
        starts = torch.randint(len(self.data) - T, (self.batch_size,), generator=self.generator).numpy()
        windows = torch.from_numpy(np.stack([self.data[i:i + T + 1] for i in starts]).astype(np.int64))
        x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()  # (B, T) each: y is x shifted by one
        if self.device.type == "cuda":  # pinned memory lets the copy overlap with compute
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)


@torch.no_grad()
def estimate_loss(model, batches, eval_iters, ctx):
    """Mean loss over eval_iters random batches of each split, in eval mode (no dropout)."""
    model.eval()
    out = {}
    for split, source in batches.items():
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            x, y = source.sample()
            with ctx:
                _, loss = model(x, y)
            losses[k] = loss.item()
        out[split] = losses.mean().item()
    model.train()
    return out


@torch.no_grad()
def evaluate_split(model, data, block_size, batch_size, device, ctx):
    """Mean loss over every next-token target of a split, each scored once: the same figure every time.

    Consecutive windows of block_size targets; the tail too short for a window is
    scored in one last window ending at the split's end, counting only its new targets.
    """
    model.eval()
    T = block_size
    n_targets = len(data) - 1
    starts = list(range(0, n_targets - T + 1, T))
    tail = n_targets - len(starts) * T
    if tail:
        starts.append(n_targets - T)
    total = 0.0
    for first in range(0, len(starts), batch_size):
        rows = starts[first:first + batch_size]
        windows = torch.from_numpy(np.stack([data[s:s + T + 1] for s in rows]).astype(np.int64)).to(device)
        with ctx:
            logits, _ = model(windows[:, :-1])
        losses = F.cross_entropy(logits.float().transpose(1, 2), windows[:, 1:], reduction="none")  # (B, T)
        if tail and first + len(rows) == len(starts):
            losses[-1, :T - tail] = 0.0  # targets the previous window already scored
        total += losses.sum().item()
    return total / n_targets


def optimizer_step(model, optimizer, micro_batches, ctx, scaler, grad_clip, sync=None):
    """One optimizer step over a list of (x, y) micro-batches; returns the mean loss (a tensor).

    Each micro-batch's loss is divided by their count, so the accumulated gradient
    is the mean over all of them, as if they were one big batch. Under DDP,
    gradients are all-reduced only on the last micro-step (`sync(True)`).
    """
    n = len(micro_batches)
    total = 0.0
    for i, (x, y) in enumerate(micro_batches):
        if sync is not None:
            sync(i == n - 1)
        with ctx:
            _, loss = model(x, y)
            loss = loss / n
        scaler.scale(loss).backward()
        total = total + loss.detach()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return total


def bytes_per_token(meta):
    if meta.get("val_bytes") and meta.get("val_tokens"):
        return meta["val_bytes"] / meta["val_tokens"]
    return None


def init_model(cfg, model_cfg, meta, device):
    """Build the model (and the training state to resume from, if any) as init_from says."""
    if cfg.init_from == "scratch":
        model_cfg = replace(model_cfg, vocab_size=meta["vocab_size"])
        return build_model(model_cfg).to(device), None
    if cfg.init_from == "resume":
        return load_resume_state(cfg, model_cfg, meta, device)
    # Anything else is GPT-2's weights, by name or local path. Check the data before a download.
    if meta["tokenizer"] != "gpt2":
        raise UserError(f"GPT-2's weights need GPT-2 tokens, but dataset {cfg.dataset} is {meta['tokenizer']}-level; "
                        f"prepare it with python prepare.py --tokenizer gpt2")
    from gpt2_weights import load_pretrained
    model = load_pretrained(cfg.init_from, dropout=model_cfg.dropout).to(device)
    if meta["vocab_size"] > model.config.vocab_size:
        raise UserError(f"dataset {cfg.dataset} has {meta['vocab_size']} tokens but {cfg.init_from} knows "
                        f"{model.config.vocab_size}; use a GPT-2 model with the full vocabulary")
    if model_cfg.block_size > model.config.block_size:
        raise UserError(f"{cfg.init_from} has a context of {model.config.block_size} positions; "
                        f"use --block_size={model.config.block_size} or less")
    if model_cfg.block_size < model.config.block_size:
        model.crop_block_size(model_cfg.block_size)  # fine-tune on shorter windows: faster, less memory
    return model, None


def train(cfg, model_cfg):
    """Run training as cfg says; returns {'losses': [...], 'best_val_loss': ...} on the master process."""
    ddp = distributed.setup(cfg)
    master = ddp.rank == 0
    device = ddp.device or pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    ctx = autocast(device, dtype)
    meta, splits = load_dataset(cfg)
    tokenizer_meta = {k: meta[k] for k in ("tokenizer", "vocab_size", "chars") if k in meta}
    accum = cfg.gradient_accumulation_steps // ddp.world_size  # this process's share of the micro-steps
    if cfg.eval_only:
        return run_eval_only(cfg, meta, splits, device, ctx)
    if master:
        check_writable(cfg.out_dir)
    last_path = os.path.join(cfg.out_dir, LAST)

    torch.manual_seed(cfg.seed + ddp.rank)
    model, state = init_model(cfg, model_cfg, meta, device)
    model_cfg = model.config
    for split, data in splits.items():
        if len(data) <= model_cfg.block_size + 1:
            raise UserError(f"the {split} split has {len(data)} tokens, too few for block_size "
                            f"{model_cfg.block_size}; use a longer text or a smaller --block_size")
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    optimizer = build_optimizer(model, cfg)
    # Separate generators: changing the eval cadence never changes the training batches.
    # Each rank draws its own batches; only rank 0 evaluates.
    train_gen = torch.Generator().manual_seed(cfg.seed + ddp.rank)
    eval_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    train_batches = Batches(splits["train"], model_cfg.block_size, cfg.batch_size, device, train_gen)
    eval_batches = {s: Batches(splits[s], model_cfg.block_size, cfg.batch_size, device, eval_gen) for s in splits}

    tokens_per_step = cfg.batch_size * model_cfg.block_size * cfg.gradient_accumulation_steps
    start_step, best_val_loss = 0, float("inf")
    tokens_seen, elapsed_before = 0, 0.0  # both carry on across resumes, for the metrics log
    saved_rng = None  # this rank's random state, restored last of all, just before the first step
    resumed = state is not None
    if resumed:
        restore_optimizer(state, optimizer, scaler, last_path, cfg.optimizer)
        start_step, best_val_loss = state["iter_num"], state["best_val_loss"]
        tokens_seen = state.get("tokens", start_step * tokens_per_step)
        elapsed_before = state.get("elapsed", 0.0)
        eval_gen.set_state(state["rng"][0]["eval"])
        saved_rng = rank_rng(state, ddp.rank, ddp.world_size)
        if saved_rng is None:  # another number of processes: fresh streams, distinct for every rank
            fresh = cfg.seed + ddp.rank + start_step * ddp.world_size
            torch.manual_seed(fresh)
            train_gen.manual_seed(fresh)
        if master:
            report_changes(cfg, model_cfg, state)
            if saved_rng is None:
                print(f"{last_path} was written by {len(state['rng'])} processes and this run has "
                      f"{ddp.world_size}, so its batches differ from those the stopped run would have drawn")
            print(f"resuming from iteration {start_step} (best val loss {best_val_loss:.4f})")
        state = None

    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    model = ddp.wrap(model)

    flops_tok = flops_per_token(model_cfg, raw_model.num_params())
    peak = peak_flops(device, dtype) if master else None
    if peak:
        peak *= ddp.world_size  # tokens/s counts every process, each with a device (or CPU threads) of its own
    bpt = bytes_per_token(meta)
    log = plot = None
    if master:
        print(f"{raw_model.num_params():,} parameters; device {device}, {str(dtype).removeprefix('torch.')}"
              f"{', compiled' if cfg.compile else ''}; {tokens_per_step:,} tokens per step"
              f"{f' across {ddp.world_size} processes' if ddp.world_size > 1 else ''}")
        wandb = start_wandb(cfg.wandb_project, cfg.wandb_run_name, asdict(cfg) | asdict(model_cfg)) \
            if cfg.wandb_log else None
        log = MetricsLog(cfg.out_dir, wandb)
        plot = TrainingPlot(cfg.out_dir, log.path)
        if resumed:
            log.write("resume", iter=start_step, tokens=tokens_seen, elapsed=elapsed_before)

    def training_state(step):
        """Everything --init_from=resume needs to continue exactly from `step`."""
        rng = {"global": rng_state(), "train": train_gen.get_state(), "eval": eval_gen.get_state()}
        return {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "model_config": asdict(model_cfg), "train_config": asdict(cfg), "tokenizer": tokenizer_meta,
                "iter_num": step, "best_val_loss": best_val_loss, "rng": ddp.gather(rng),
                "tokens": tokens_seen, "elapsed": elapsed(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None}

    t_start = time.perf_counter()

    def elapsed():
        """Seconds of training since iteration 0, summed over resumes (as far as the checkpoint)."""
        return elapsed_before + time.perf_counter() - t_start

    pending = []  # (step, loss tensor) not yet checked: reading a loss forces a device sync
    losses = {}
    unproven = None  # last.pt written to its temporary file, kept out of place until its weights give a finite loss
    saved_step = start_step if resumed else None  # the iteration of the last.pt in place
    t_last, steps_timed = time.perf_counter(), 0
    recent_ms, pause_s = [], 0.0  # pause_s: how long the latest evaluation and save took

    def stop_on(what, value, step_done):
        discard_pending(unproven)
        kept = f"last.pt (iteration {saved_step}) and ckpt.pt" if saved_step is not None else "earlier checkpoints"
        raise UserError(f"{what} became {value} at iteration {step_done}; stopped without saving these weights. "
                        f"{kept} in {cfg.out_dir} are kept: lower learning_rate or check the data, "
                        "then --init_from=resume")

    def check_losses():
        for step_done, loss in pending:
            value = loss.item()
            if not math.isfinite(value):
                stop_on("loss", value, step_done)
            losses[step_done] = value
        pending.clear()

    if saved_rng is not None:
        set_rng_state(saved_rng["global"])
        train_gen.set_state(saved_rng["train"])

    for step in range(start_step, cfg.max_iters + 1):
        last_step = step == cfg.max_iters
        lr = get_lr(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # Muon's groups: their own rate, the same schedule
        just_resumed = resumed and step == start_step  # its eval and save happened before the stop
        t_pause = time.perf_counter()
        evaluating = master and not just_resumed and (step % cfg.eval_interval == 0 or last_step)

        if evaluating:
            check_losses()
            split_losses = estimate_loss(model, eval_batches, cfg.eval_iters, ctx)
            for split, value in split_losses.items():
                if not math.isfinite(value):
                    stop_on(f"{split} loss", value, step)
            val = loss_figures(split_losses["val"], meta["tokenizer"], bpt)
            print(f"step {step}: train loss {split_losses['train']:.4f}, val loss {format_figures(val)}")
            log.write("eval", iter=step, tokens=tokens_seen, train_loss=split_losses["train"],
                      val_loss=split_losses["val"], **{f"val_{k}": v for k, v in val.items() if k != "loss"},
                      lr=lr, elapsed=elapsed())
            plot.update(final=last_step)
            if split_losses["val"] < best_val_loss:
                best_val_loss = split_losses["val"]
                save_checkpoint({"model": raw_model.state_dict(), "model_config": asdict(model_cfg),
                                 "tokenizer": tokenizer_meta, "iter_num": step, "best_val_loss": best_val_loss},
                                os.path.join(cfg.out_dir, BEST))
        if not just_resumed and (step % cfg.checkpoint_interval == 0 or last_step):
            snapshot = training_state(step)  # every rank takes part: the RNG states are gathered
            if master:
                unproven = write_pending(snapshot, last_path)
                if evaluating:  # the evaluation above has just shown these weights give finite losses
                    commit_checkpoint(unproven, last_path)
                    unproven, saved_step = None, step
            del snapshot
        paused = time.perf_counter() - t_pause
        t_last += paused  # evaluation and saving stay out of ms/iter
        pause_s = paused if evaluating else pause_s
        if last_step:
            break

        micro = [train_batches.sample() for _ in range(accum)]
        loss = ddp.mean(optimizer_step(model, optimizer, micro, ctx, scaler, cfg.grad_clip, ddp.sync))
        steps_timed += 1
        tokens_seen += tokens_per_step
        if master:
            pending.append((step, loss))
            if unproven:  # this step's loss came from the weights just written: finite, they may replace last.pt
                check_losses()
                commit_checkpoint(unproven, last_path)
                unproven, saved_step = None, step
        if master and ((step + 1) % cfg.log_interval == 0 or step + 1 == cfg.max_iters):
            check_losses()  # the only host sync outside evaluation and saving
            now = time.perf_counter()
            ms = (now - t_last) * 1000 / steps_timed
            t_last, steps_timed = now, 0
            recent_ms = (recent_ms + [ms])[-10:]
            tok_s = tokens_per_step / (ms / 1000)
            util = mfu(tok_s, flops_tok, peak)
            evals_left = cfg.max_iters // cfg.eval_interval - step // cfg.eval_interval \
                + (cfg.max_iters % cfg.eval_interval != 0)
            eta = (cfg.max_iters - step - 1) * sum(recent_ms) / len(recent_ms) / 1000 + evals_left * pause_s
            print(f"iter {step + 1}/{cfg.max_iters}: loss {losses[step]:.4f}, {ms:.1f} ms/iter, {tok_s:,.0f} tok/s"
                  f"{f', mfu {100 * util:.1f}%' if util is not None else ''}, eta {eta:.0f}s")
            log.write("train", iter=step + 1, tokens=tokens_seen, loss=losses[step], lr=lr, ms_per_iter=ms,
                      tokens_per_sec=tok_s, mfu=util, elapsed=elapsed())

    if master:
        check_losses()
        print(f"done: best val loss {best_val_loss:.4f}; checkpoints in {cfg.out_dir}")
    ddp.cleanup()
    return {"losses": [losses[k] for k in sorted(losses)], "best_val_loss": best_val_loss}


def run_eval_only(cfg, meta, splits, device, ctx):
    """--eval_only: the whole val split, every target once, so the figure is repeatable."""
    path = os.path.join(cfg.out_dir, BEST)
    model, _, ckpt = load_model(path, device)
    check_vocabulary(ckpt, meta, cfg.dataset, path, "evaluate")
    block_size, val = model.config.block_size, splits["val"]
    if len(val) <= block_size:
        raise UserError(f"the val split of {cfg.dataset} has {len(val)} tokens, too few for the checkpoint's "
                        f"block_size {block_size}; evaluate on a dataset with a longer val split")
    loss = evaluate_split(model, val, block_size, cfg.batch_size, device, ctx)
    figures = loss_figures(loss, meta["tokenizer"], bytes_per_token(meta))
    print(f"val loss {format_figures(figures)} over all {len(val) - 1:,} targets of {cfg.dataset} "
          f"({path}, iteration {ckpt.get('iter_num', '?')})")
    return figures


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(help_text())
        return None
    cfg, model_cfg = load_settings(argv)
    try:
        return train(cfg, model_cfg)
    except RuntimeError as e:
        if not distributed.lost_peer(e):
            raise
        # Not this process's fault: one line here, and the process that failed says why.
        raise UserError("another process of this job stopped, so this one cannot go on; "
                        "the first error printed says why") from None


if __name__ == "__main__":
    run_main(main)
