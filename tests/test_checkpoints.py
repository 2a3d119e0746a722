"""Checkpoints survive kills, full disks and bad files; bad input stops training with one clear line."""
import errno
import os
import random
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import train
from checkpoint import load_checkpoint
from conftest import OUT_FILES, ROOT, TINY_MODEL, run_script
from common import UserError, run_main
from eval import current_records, read_metrics
from prepare import prepare
from test_scripts import assert_one_line_error

ARGS = ["--dataset=tiny", "--data_root=data", *TINY_MODEL]


def run_train(workdir, monkeypatch, *extra):
    monkeypatch.chdir(workdir)
    return train.main([*ARGS, "--out_dir=out", *extra])


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def start_training(workdir, *extra):
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *ARGS, *extra], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_line(proc, prefix, timeout):
    """Read proc's output until a line starts with prefix; returns (found, output so far)."""
    deadline, output = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:  # the process ended
            return False, "".join(output)
        output.append(line)
        if line.startswith(prefix):
            return True, "".join(output)
    return False, "".join(output)


def test_killed_while_writing_checkpoints_always_resumes(workdir, monkeypatch):
    """SIGKILL at random moments of a run that writes last.pt every step, then resume: the checkpoint
    always loads, and the finished run is the one that was never interrupted, step for step."""
    run = ["--max_iters=40", "--checkpoint_interval=1", "--eval_interval=10", "--dropout=0.1", "--lr_decay_iters=40"]
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    out = workdir / "out"
    kills, last_iter = 0, 0
    while kills < 3:
        resume = ["--init_from=resume"] if (out / "last.pt").exists() else []
        proc = start_training(workdir, "--out_dir=out", *run, *resume)
        started, output = wait_for_line(proc, "iter ", timeout=60)
        if not started:  # it finished (or failed) before training got going: no kill this time
            assert proc.wait(timeout=60) == 0, output
            break
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        proc.stdout.close()
        state = load_checkpoint(out / "last.pt")  # whole, whenever the kill came
        assert state["iter_num"] >= last_iter, f"seed {seed}"
        last_iter = state["iter_num"]
        assert len(list(out.glob("*.tmp*"))) <= 1  # at most one half-written file is left behind
    result = run_script("train.py", *ARGS, "--out_dir=out", *run, "--init_from=resume", cwd=workdir)
    assert "done: best val loss" in result.stdout
    assert kills >= 2, f"seed {seed}: the run finished before it could be killed twice"

    run_train(workdir, monkeypatch, *run, "--out_dir=never_stopped")  # in this process: faster
    stopped, never = (current_records(read_metrics(workdir / d / "metrics.jsonl")) for d in ("out", "never_stopped"))
    figures = [[(r["kind"], r["iter"], r.get("loss"), r.get("val_loss")) for r in records if r["kind"] != "resume"]
               for records in (stopped, never)]
    assert figures[0] == figures[1] and len(figures[0]) == 40 + 5, f"seed {seed}"  # 40 steps, 5 evaluations
    final = load_checkpoint(out / "last.pt")["model"], load_checkpoint(workdir / "never_stopped" / "last.pt")["model"]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[1]), f"seed {seed}"


def test_out_of_disk_space_keeps_the_previous_checkpoint(workdir, monkeypatch, capsys):
    run_train(workdir, monkeypatch, "--max_iters=2", "--checkpoint_interval=1")
    before = file_bytes(workdir / "out" / "last.pt")
    real_save = torch.save

    def save_until_the_disk_fills(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 the first bytes of a zip")  # a partial file, as a full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    with pytest.raises(SystemExit):
        run_main(lambda: run_train(workdir, monkeypatch, "--max_iters=4", "--checkpoint_interval=1",
                                   "--init_from=resume"))
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: out of disk space while saving") and "intact" in err and "\n" not in err
    monkeypatch.setattr(torch, "save", real_save)
    assert file_bytes(workdir / "out" / "last.pt") == before
    assert load_checkpoint(workdir / "out" / "last.pt")["iter_num"] == 2
    assert sorted(p.name for p in (workdir / "out").iterdir()) == OUT_FILES


def test_out_dir_that_cannot_be_written(workdir, monkeypatch):
    (workdir / "a_file").write_text("not a folder")
    assert_one_line_error(run_script("train.py", *ARGS, "--out_dir=a_file/out", "--max_iters=1", cwd=workdir,
                                     check=False), "out_dir a_file/out is not writable", "choose another --out_dir")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only folders anyway")
def test_read_only_out_dir(workdir, monkeypatch):
    (workdir / "locked").mkdir(mode=0o500)
    with pytest.raises(UserError, match="not writable .*Permission denied"):
        run_train(workdir, monkeypatch, "--out_dir=locked", "--max_iters=1")


@pytest.fixture
def trained(workdir, monkeypatch):
    """workdir with out/ holding a finished 2-step run's ckpt.pt and last.pt."""
    run_train(workdir, monkeypatch, "--max_iters=2", "--eval_interval=1")
    return workdir


def test_truncated_checkpoints_are_clear_errors(trained, monkeypatch):
    for name in ("last.pt", "ckpt.pt"):
        path = trained / "out" / name
        path.write_bytes(file_bytes(path)[:2000])
    with pytest.raises(UserError, match="last.pt is damaged or not a checkpoint"):
        run_train(trained, monkeypatch, "--max_iters=4", "--init_from=resume")
    result = run_script("sample.py", "--out_dir=out", "--device=cpu", cwd=trained, check=False)
    assert_one_line_error(result, "ckpt.pt is damaged or not a checkpoint")


class RunsCode:
    """Unpickling this calls os.system: what a booby-trapped checkpoint would do."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_checkpoint_that_would_run_code_is_refused(trained, monkeypatch):
    marker = trained / "code_ran"
    for name in ("last.pt", "ckpt.pt"):
        state = load_checkpoint(trained / "out" / name)
        state["model_config"] = RunsCode(f"touch {marker}")
        torch.save(state, trained / "out" / name)
    with pytest.raises(UserError, match="holds Python objects.*posix.system.*not loaded"):
        run_train(trained, monkeypatch, "--max_iters=4", "--init_from=resume")
    for args in (("sample.py", "--out_dir=out", "--device=cpu"),
                 ("train.py", *ARGS, "--out_dir=out", "--eval_only=true")):
        assert_one_line_error(run_script(*args, cwd=trained, check=False), "holds Python objects", "not loaded")
    assert not marker.exists()


def test_files_that_are_not_our_checkpoints(trained, monkeypatch):
    out = trained / "out"
    (out / "last.pt").write_bytes(file_bytes(out / "ckpt.pt"))  # a best-model file has no training state
    with pytest.raises(UserError, match="holds no training state to resume from"):
        run_train(trained, monkeypatch, "--max_iters=4", "--init_from=resume")
    torch.save(torch.zeros(3), out / "last.pt")
    with pytest.raises(UserError, match="not a checkpoint of this project"):
        run_train(trained, monkeypatch, "--max_iters=4", "--init_from=resume")
    (out / "last.pt").write_text("plain text, not a checkpoint")
    with pytest.raises(UserError, match="damaged or not a checkpoint"):
        run_train(trained, monkeypatch, "--max_iters=4", "--init_from=resume")


def nan_from_training_step(monkeypatch, first_bad_step):
    """Make the model's training loss NaN from the given step on (evaluation is left alone)."""
    from model import GPT
    real_forward, calls = GPT.forward, []

    def forward(self, idx, targets=None, **kwargs):
        logits, loss = real_forward(self, idx, targets, **kwargs)
        if self.training and targets is not None:
            calls.append(1)
            if len(calls) > first_bad_step:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)


@pytest.mark.parametrize("how, bad_step, kept_step", [
    ("learning_rate", 1, 0),  # the first step throws the weights so far that the next loss is NaN
    ("forward", 5, 4),
])
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(workdir, monkeypatch, capsys, how, bad_step, kept_step):
    args = ["--max_iters=10", "--checkpoint_interval=2", "--eval_interval=2", "--log_interval=3", "--grad_clip=0"]
    if how == "learning_rate":
        args += ["--learning_rate=1e30", "--checkpoint_interval=1", "--decay_lr=false"]
    else:
        nan_from_training_step(monkeypatch, bad_step)
    with pytest.raises(UserError) as stopped:
        run_train(workdir, monkeypatch, *args)
    message = str(stopped.value)
    assert f"loss became nan at iteration {bad_step}" in message and "\n" not in message
    assert f"last.pt (iteration {kept_step})" in message
    last, best = load_checkpoint(workdir / "out" / "last.pt"), load_checkpoint(workdir / "out" / "ckpt.pt")
    assert last["iter_num"] == kept_step and best["iter_num"] <= kept_step
    for state in (last, best):
        assert all(torch.isfinite(w).all() for w in state["model"].values())
    assert not list((workdir / "out").glob("*.tmp*"))
    monkeypatch.undo()
    # The kept checkpoint resumes; a lower learning rate trains on from it.
    capsys.readouterr()
    result = run_train(workdir, monkeypatch, "--max_iters=10", "--checkpoint_interval=2", "--init_from=resume",
                       "--learning_rate=1e-3")
    assert f"resuming from iteration {kept_step}" in capsys.readouterr().out
    assert len(result["losses"]) == 10 - kept_step


def test_resume_refuses_another_vocabulary_or_model_shape(trained, monkeypatch):
    (trained / "other.txt").write_text("xyz and other letters, quite different: QQQ\n" * 40)
    prepare(str(trained / "other.txt"), "other", "char", data_root=str(trained / "data"))
    with pytest.raises(UserError, match="dataset other has a different vocabulary from out/last.pt"):
        train.main(["--dataset=other", *TINY_MODEL, "--out_dir=out", "--max_iters=4", "--init_from=resume"])
    with pytest.raises(UserError, match=r"different model shape \(n_layer 2 -> 3, n_embd 32 -> 48\)"):
        run_train(trained, monkeypatch, "--max_iters=4", "--init_from=resume", "--n_layer=3", "--n_embd=48")
    with pytest.raises(UserError, match="max_iters 1 is below iteration 2"):
        run_train(trained, monkeypatch, "--max_iters=1", "--init_from=resume")


def test_changed_settings_are_allowed_and_named(trained, monkeypatch, capsys):
    run_train(trained, monkeypatch, "--max_iters=3", "--eval_interval=1", "--init_from=resume",
              "--learning_rate=1e-3", "--dropout=0.2")
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("resuming with changed settings"))
    for change in ("max_iters 2 -> 3", "learning_rate 0.0006 -> 0.001", "dropout 0.0 -> 0.2"):
        assert change in line


def test_val_split_shorter_than_a_block(workdir, monkeypatch):
    np.arange(12, dtype=np.uint16).tofile(workdir / "data" / "tiny" / "val.bin")  # block_size 16 needs 17
    with pytest.raises(UserError, match="the val split has 12 tokens, too few for block_size 16"):
        run_train(workdir, monkeypatch, "--max_iters=1")


def test_cuda_asked_for_without_a_gpu(workdir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU; use --device=cpu"):
        run_train(workdir, monkeypatch, "--max_iters=1", "--device=cuda")


def test_files_of_an_earlier_layout_are_refused_with_one_line(trained, monkeypatch):
    best = load_checkpoint(trained / "out" / "ckpt.pt")
    vocab = best["model_config"]["vocab_size"]
    for key in ("wte.weight", "lm_head.weight"):  # as written before vocabularies were padded to 64
        best["model"][key] = best["model"][key][:vocab].clone()
    torch.save(best, trained / "out" / "ckpt.pt")
    assert_one_line_error(run_script("sample.py", "--out_dir=out", "--device=cpu", cwd=trained, check=False),
                          "written by an earlier version of this project", "train the model again")
    last = load_checkpoint(trained / "out" / "last.pt")
    del last["tokens"], last["elapsed"]  # as written before runs counted their tokens and time
    torch.save(last, trained / "out" / "last.pt")
    with pytest.raises(UserError, match=r"holds no training state to resume from \(no tokens, elapsed\)"):
        run_train(trained, monkeypatch, "--max_iters=4", "--init_from=resume")

