"""Train a GPT on a prepared dataset.

    python train.py config/shakespeare_char_cpu.py
    python train.py config/shakespeare_char.py --max_iters=100 --device=cpu
    python train.py config/shakespeare_char_cpu.py --init_from=resume     # carry on from out_dir/last.pt
    torchrun --standalone --nproc_per_node=4 train.py config/shakespeare_char.py --gradient_accumulation_steps=4

`python train.py --help` lists every setting. One flat loop: evaluate, save,
take an optimizer step; the last step always evaluates and saves.
"""
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from checkpoint import (BEST, LAST, LastCheckpoint, check_writable, gpt2_weights, load_resume_state, rank_rng,
                        report_changes, restore_optimizer, rng_state, save_checkpoint, set_rng_state)
from common import UserError, autocast, mfu, peak_flops, pick_device, pick_dtype, run_main
from eval import MetricsLog, TrainingPlot, evaluate_checkpoint, format_figures, loss_figures, start_wandb
from model import build_model
from optim import build_optimizer, lost_peer, setup_distributed
from settings import help_text, load_settings
from tokenizer import bytes_per_token, check_long_enough, load_dataset

EVAL_SEED_OFFSET = 1_000_003  # evaluation's generator: a stream apart from every rank's training one


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


class Batches:
    """Random windows of block_size + 1 tokens from one split: inputs and next-token targets.

    A split is one token file or several shards (a list). A window may start anywhere
    a whole window fits, each place as likely as any other, so shards are drawn from
    in proportion to their size; no window crosses from one shard into the next.
    """

    def __init__(self, data, block_size, batch_size, device, generator):
        self.shards = data if isinstance(data, list) else [data]
        self.block_size, self.batch_size, self.device, self.generator = block_size, batch_size, device, generator
        self.first = np.cumsum([0] + [max(len(s) - block_size, 0) for s in self.shards])  # each shard's first start

    def sample(self):
        T = self.block_size
        picks = torch.randint(int(self.first[-1]), (self.batch_size,), generator=self.generator).numpy()
        shards = np.searchsorted(self.first, picks, side="right") - 1
        starts = picks - self.first[shards]
        windows = np.stack([self.shards[s][i:i + T + 1] for s, i in zip(shards, starts)])
        windows = torch.from_numpy(windows.astype(np.int64))
        x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()  # (B, T) each: y is x shifted by one
        if self.device.type == "cuda":  # pinned memory lets the copy overlap with compute
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)


@torch.no_grad()
def estimate_loss(model, batches, eval_iters, ctx, ddp):
    """Mean loss over eval_iters random batches of each split, in eval mode (no dropout).

    Under torchrun every process scores its share of the batches.
    """
    model.eval()
    share = -(-eval_iters // ddp.world_size)
    out = {}
    for split, source in batches.items():
        total = torch.zeros((), device=source.device)
        for _ in range(share):
            x, y = source.sample()
            with ctx:
                total += model(x, y)[1].float()
        out[split] = (ddp.sum(total) / (share * ddp.world_size)).item()  # the one wait for the device
    model.train()
    return out


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
            loss = model(x, y)[1] / n  # the logits are let go at once: only the loss is kept
        scaler.scale(loss).backward()
        total = total + loss.detach()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return total


def init_model(cfg, model_cfg, meta, ddp):
    """(model on the CPU, the training state to resume from or None) as init_from says."""
    if cfg.init_from == "scratch":
        return build_model(replace(model_cfg, vocab_size=meta["vocab_size"])), None
    if cfg.init_from == "resume":
        return load_resume_state(cfg, model_cfg, meta)
    model = gpt2_weights(cfg.init_from, meta, cfg.dataset, ddp, model_cfg.dropout)  # anything else: GPT-2's
    if meta["vocab_size"] > model.config.vocab_size:
        raise UserError(f"dataset {cfg.dataset} has {meta['vocab_size']} tokens but {cfg.init_from} knows "
                        f"{model.config.vocab_size}; use a GPT-2 model with the full vocabulary")
    if model_cfg.block_size > model.config.block_size:
        raise UserError(f"{cfg.init_from} has a context of {model.config.block_size} positions; "
                        f"use --block_size={model.config.block_size} or less")
    if model_cfg.block_size < model.config.block_size:
        model.crop_block_size(model_cfg.block_size)  # fine-tune on shorter windows: faster, less memory
    return model, None


def set_up_device(device, cfg):
    """Process-wide switches for this run's device."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls: 8x the fp32 rate on A100 and later
    if cfg.deterministic:
        # cuBLAS needs a fixed workspace to give the same sums twice (set before its first use).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def compiled_for_training(model, ddp, compile_model):
    """The module the steps call: wrapped in DDP first, then compiled, as PyTorch advises,
    so the gradients' all-reduce overlaps the compiled backward pass."""
    model = ddp.wrap(model)
    return torch.compile(model) if compile_model else model


@dataclass
class Progress:
    """Where training stands: all that carries on across a resume, besides weights and generators."""
    start_step: int = 0  # the iteration training starts from
    best_val_loss: float = float("inf")
    tokens: int = 0
    elapsed_before: float = 0.0  # seconds trained before this process started, summed over resumes


def resume_progress(state, cfg, model_cfg, optimizer, scaler, generators, ddp):
    """Restore the optimizer and say where the run stands; returns (Progress, this rank's saved random state)."""
    path = os.path.join(cfg.out_dir, LAST)
    restore_optimizer(state, optimizer, scaler, path, cfg.optimizer)
    step = state["iter_num"]
    progress = Progress(step, state["best_val_loss"], state["tokens"], state["elapsed"])
    saved = rank_rng(state, ddp.rank, ddp.world_size)
    if saved is None:  # another number of processes: fresh streams, distinct for every rank
        fresh = cfg.seed + ddp.rank + step * ddp.world_size
        torch.manual_seed(fresh)
        for gen in generators.values():
            gen.manual_seed(fresh + (EVAL_SEED_OFFSET if gen is generators["eval"] else 0))
    if ddp.rank == 0:
        report_changes(cfg, model_cfg, state)
        if saved is None:
            print(f"{path} was written by {len(state['rng'])} processes and this run has "
                  f"{ddp.world_size}, so its batches differ from those the stopped run would have drawn")
        print(f"resuming from iteration {step} (best val loss {progress.best_val_loss:.4f})")
    return progress, saved


class Report:
    """What rank 0 prints and logs: timings, evaluations, metrics.jsonl and its plot. Other ranks stay quiet."""

    def __init__(self, cfg, model_cfg, meta, n_params, flops_per_token, device, dtype, ddp, progress, resumed):
        self.cfg, self.meta, self.on = cfg, meta, ddp.rank == 0
        self.tokens_per_step = cfg.batch_size * model_cfg.block_size * cfg.gradient_accumulation_steps
        self.elapsed_before, self.t_start = progress.elapsed_before, time.perf_counter()
        self.t_last, self.steps_timed, self.recent_ms, self.pause_s = self.t_start, 0, [], 0.0
        if not self.on:
            return
        self.flops_tok = flops_per_token
        # tokens/s counts every process, each with a device (or CPU threads) of its own
        peak = peak_flops(device, dtype)
        self.peak = peak * ddp.world_size if peak else None
        self.bytes_per_token = bytes_per_token(meta)
        print(f"{n_params:,} parameters; device {device}, {str(dtype).removeprefix('torch.')}"
              f"{', compiled' if cfg.compiles(device) else ''}; {self.tokens_per_step:,} tokens per step"
              f"{f' across {ddp.world_size} processes' if ddp.world_size > 1 else ''}")
        wandb = start_wandb(cfg.wandb_project, cfg.wandb_run_name, asdict(cfg) | asdict(model_cfg)) \
            if cfg.wandb_log else None
        self.log = MetricsLog(cfg.out_dir, wandb)
        self.plot = TrainingPlot(cfg.out_dir, self.log.path)
        if resumed:
            self.log.write("resume", iter=progress.start_step, tokens=progress.tokens, elapsed=progress.elapsed_before)

    def elapsed(self):
        """Seconds of training since iteration 0, summed over resumes."""
        return self.elapsed_before + time.perf_counter() - self.t_start

    def paused(self, seconds, evaluated):
        """Evaluation and saving took this long: kept out of ms/iter, counted in the ETA."""
        self.t_last += seconds
        self.pause_s = seconds if evaluated else self.pause_s

    def evaluation(self, step, losses, lr, tokens, last_step):
        if not self.on:
            return
        val = loss_figures(losses["val"], self.meta["tokenizer"], self.bytes_per_token)
        print(f"step {step}: train loss {losses['train']:.4f}, val loss {format_figures(val)}")
        self.log.write("eval", iter=step, tokens=tokens, train_loss=losses["train"], val_loss=losses["val"],
                       **{f"val_{k}": v for k, v in val.items() if k != "loss"}, lr=lr, elapsed=self.elapsed())
        self.plot.update(final=last_step)

    def steps(self, step, loss, lr, tokens):
        """The line and the record of every log_interval steps, for the steps since the last."""
        self.steps_timed += 1
        if not self.on or ((step + 1) % self.cfg.log_interval and step + 1 != self.cfg.max_iters):
            return
        now = time.perf_counter()
        ms = (now - self.t_last) * 1000 / self.steps_timed
        self.t_last, self.steps_timed = now, 0
        self.recent_ms = (self.recent_ms + [ms])[-10:]
        tok_s = self.tokens_per_step / (ms / 1000)
        util = mfu(tok_s, self.flops_tok, self.peak)
        cfg = self.cfg
        evals_left = cfg.max_iters // cfg.eval_interval - step // cfg.eval_interval + (cfg.max_iters % cfg.eval_interval != 0)
        eta = (cfg.max_iters - step - 1) * sum(self.recent_ms) / len(self.recent_ms) / 1000 + evals_left * self.pause_s
        print(f"iter {step + 1}/{cfg.max_iters}: loss {loss:.4f}, {ms:.1f} ms/iter, {tok_s:,.0f} tok/s"
              f"{f', mfu {100 * util:.1f}%' if util is not None else ''}, eta {eta:.0f}s")
        self.log.write("train", iter=step + 1, tokens=tokens, loss=loss, lr=lr, ms_per_iter=ms,
                       tokens_per_sec=tok_s, mfu=util, elapsed=self.elapsed())


def train(cfg, model_cfg):
    """Run training as cfg says; returns {'losses': [...], 'best_val_loss': ...} on rank 0."""
    ddp = setup_distributed(cfg)
    master = ddp.rank == 0
    device = ddp.device or pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    ctx = autocast(device, dtype)
    set_up_device(device, cfg)
    meta, splits = load_dataset(cfg.data_root, cfg.dataset)
    if cfg.eval_only:  # score a checkpoint on the whole val split instead (eval.py)
        figures = evaluate_checkpoint(cfg, meta, splits, device, ctx, ddp)
        ddp.cleanup()
        return figures
    if master:
        check_writable(cfg.out_dir)
    torch.manual_seed(cfg.seed + ddp.rank)
    model, state = init_model(cfg, model_cfg, meta, ddp)
    model, model_cfg = model.to(device), model.config
    for split, shards in splits.items():
        check_long_enough(shards, model_cfg.block_size, f"the {split} split")
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    optimizer = build_optimizer(model, cfg)
    # Separate generators: changing the eval cadence never changes the training batches.
    gens = {"train": torch.Generator().manual_seed(cfg.seed + ddp.rank),
            "eval": torch.Generator().manual_seed(cfg.seed + EVAL_SEED_OFFSET + ddp.rank)}
    train_batches = Batches(splits["train"], model_cfg.block_size, cfg.batch_size, device, gens["train"])
    eval_batches = {s: Batches(splits[s], model_cfg.block_size, cfg.batch_size, device, gens["eval"]) for s in splits}
    progress, saved_rng = Progress(), None
    if state is not None:
        progress, saved_rng = resume_progress(state, cfg, model_cfg, optimizer, scaler, gens, ddp)
    resumed, tokenizer_meta = state is not None, {k: meta[k] for k in ("tokenizer", "vocab_size", "chars") if k in meta}
    del state
    step_model = compiled_for_training(model, ddp, cfg.compiles(device))
    report = Report(cfg, model_cfg, meta, model.num_params(), model.flops_per_token(), device, dtype, ddp, progress,
                    resumed)
    last = LastCheckpoint(os.path.join(cfg.out_dir, LAST), progress.start_step if resumed else None)
    pending, losses = [], {}  # pending: (step, loss tensor) not yet read, since reading waits for the device

    def check_losses():
        for step_done, loss in pending:
            losses[step_done] = loss.item()
            if not math.isfinite(losses[step_done]):
                stop(cfg, last, "loss", losses[step_done], step_done)
        pending.clear()

    if saved_rng is not None:  # restored last of all, just before the first step
        set_rng_state(saved_rng["global"], device)
        for name, gen in gens.items():
            gen.set_state(saved_rng[name].cpu())

    for step in range(progress.start_step, cfg.max_iters + 1):
        last_step = step == cfg.max_iters
        lr = get_lr(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]  # Muon's groups: their own rate, the same schedule
        just_resumed = resumed and step == progress.start_step  # its evaluation and save came before the stop
        t_pause = time.perf_counter()
        evaluating = not just_resumed and (step % cfg.eval_interval == 0 or last_step)
        if evaluating:
            check_losses()
            split_losses = estimate_loss(step_model, eval_batches, cfg.eval_iters, ctx, ddp)
            for split, value in split_losses.items():
                if not math.isfinite(value):
                    stop(cfg, last, f"{split} loss", value, step)
            report.evaluation(step, split_losses, lr, progress.tokens, last_step)
            if split_losses["val"] < progress.best_val_loss:
                progress.best_val_loss = split_losses["val"]
                if master:
                    save_checkpoint({"model": model.state_dict(), "model_config": asdict(model_cfg),
                                     "tokenizer": tokenizer_meta, "iter_num": step,
                                     "best_val_loss": progress.best_val_loss}, os.path.join(cfg.out_dir, BEST))
        saving = not just_resumed and (step % cfg.checkpoint_interval == 0 or last_step)
        if saving:
            rng = ddp.gather({"global": rng_state(device), **{name: g.get_state() for name, g in gens.items()}})
            if master:  # an evaluation has just shown these weights give finite losses, or the next step will
                last.write({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "model_config": asdict(model_cfg), "train_config": asdict(cfg),
                            "tokenizer": tokenizer_meta, "iter_num": step, "best_val_loss": progress.best_val_loss,
                            "rng": rng, "tokens": progress.tokens, "elapsed": report.elapsed(),
                            "scaler": scaler.state_dict() if scaler.is_enabled() else None}, proven=evaluating)
        report.paused(time.perf_counter() - t_pause, evaluating)
        if last_step:
            break

        micro = [train_batches.sample() for _ in range(cfg.gradient_accumulation_steps // ddp.world_size)]
        loss = ddp.mean(optimizer_step(step_model, optimizer, micro, ctx, scaler, cfg.grad_clip, ddp.sync))
        progress.tokens += report.tokens_per_step
        pending.append((step, loss))
        # Losses are read (a wait for the device) at the same steps on every rank, since they are the
        # same everywhere: if one is not finite, every rank stops at once.
        if saving and not evaluating:  # this step's loss came from the weights last.pt holds
            check_losses()
            last.commit()
        if (step + 1) % cfg.log_interval == 0 or step + 1 == cfg.max_iters:
            check_losses()
        report.steps(step, losses.get(step), lr, progress.tokens)

    check_losses()
    if master:
        print(f"done: best val loss {progress.best_val_loss:.4f}; checkpoints in {cfg.out_dir}")
    ddp.cleanup()
    return {"losses": [losses[k] for k in sorted(losses)], "best_val_loss": progress.best_val_loss}


def stop(cfg, last, what, value, step):
    """End a run whose loss is not finite, keeping the checkpoints of the last good weights."""
    last.discard()
    kept = f"last.pt (iteration {last.step}) and ckpt.pt" if last.step is not None else "earlier checkpoints"
    raise UserError(f"{what} became {value} at iteration {step}; stopped without saving these weights. "
                    f"{kept} in {cfg.out_dir} are kept: lower learning_rate or check the data, "
                    "then --init_from=resume")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(help_text())
        return None
    cfg, model_cfg = load_settings(argv)
    try:
        return train(cfg, model_cfg)
    except RuntimeError as e:
        if not lost_peer(e):
            raise
        # Not this process's fault: one line here, and the process that failed says why.
        raise UserError("another process of this job stopped, so this one cannot go on; "
                        "the first error printed says why") from None


if __name__ == "__main__":
    run_main(main)
