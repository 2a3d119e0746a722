"""Data-parallel training under torchrun on CPU (gloo): logs once, matches one process, resumes, fails cleanly."""
import datetime
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

import optim
import train
from checkpoint import load_checkpoint
from common import UserError
from conftest import OUT_FILES, ROOT, TINY_MODEL, run_script
from distributed_worker import fixed_batches, fresh_model_and_optimizer
from eval import current_records, read_metrics
from optim import Distributed, process_device, setup_distributed
from settings import TrainConfig

CUDA = torch.device("cuda")

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="this torch has no gloo backend")

WORKER = os.path.join(ROOT, "tests", "distributed_worker.py")
ARGS = ["--dataset=tiny", *TINY_MODEL, "--dropout=0.1", "--gradient_accumulation_steps=2", "--eval_interval=4",
        "--checkpoint_interval=4", "--lr_decay_iters=8", "--warmup_iters=2"]


def launch(cwd, script, *args, nproc=2, launcher=("--standalone",), timeout=120):
    """python -m torch.distributed.run (what `torchrun` runs), with one thread per process."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, f"--nproc_per_node={nproc}", script, *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, so a hung run can be stopped whole


def finish(proc, timeout=120):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s: {' '.join(proc.args)}\n{out}\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def torchrun(cwd, script, *args, timeout=120, **kwargs):
    return finish(launch(cwd, script, *args, **kwargs), timeout)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_records(out):
    return [(r["iter"], r["loss"]) for r in current_records(read_metrics(out / "metrics.jsonl")) if r["kind"] == "train"]


def test_two_processes_train_log_once_save_once_and_resume_exactly(workdir, monkeypatch, capsys):
    result = torchrun(workdir, os.path.join(ROOT, "train.py"), *ARGS, "--out_dir=a", "--max_iters=8")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "128 tokens per step across 2 processes" in lines[0]  # batch 4 x block 16 x 2 micro-steps in all
    for once in ["step 0: train loss", "step 8: train loss", "done: best val loss", *[f"iter {i}/8:" for i in range(1, 9)]]:
        assert sum(line.startswith(once) for line in lines) == 1, once  # rank 0 alone prints
    assert sorted(p.name for p in (workdir / "a").iterdir()) == OUT_FILES
    last = load_checkpoint(workdir / "a" / "last.pt")
    assert last["iter_num"] == 8 and len(last["rng"]) == 2  # each rank's generators, for an exact resume
    assert not torch.equal(last["rng"][0]["train"], last["rng"][1]["train"])  # ranks draw different batches
    sample = run_script("sample.py", "--out_dir=a", "--start", "First", "--max_new_tokens=20", "--device=cpu",
                        cwd=workdir)
    assert sample.stdout.startswith("First")

    # Stopped at 4, then resumed in the multi-node form: two launchers, one process each, meeting at an address.
    result = torchrun(workdir, os.path.join(ROOT, "train.py"), *ARGS, "--out_dir=b", "--max_iters=4")
    assert result.returncode == 0, result.stderr
    port = free_port()
    nodes = [launch(workdir, os.path.join(ROOT, "train.py"), *ARGS, "--out_dir=b", "--max_iters=8",
                    "--init_from=resume", nproc=1, launcher=("--nnodes=2", f"--node_rank={rank}",
                                                             "--master_addr=127.0.0.1", f"--master_port={port}"))
             for rank in (0, 1)]
    try:
        results = [finish(node) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:  # left running by the other's failure
                os.killpg(node.pid, signal.SIGKILL)
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert "resuming from iteration 4" in results[0].stdout and results[1].stdout == ""  # node 1 has rank 1
    assert train_records(workdir / "b") == train_records(workdir / "a")  # loss for loss
    resumed = load_checkpoint(workdir / "b" / "last.pt")["model"]
    assert all(torch.equal(resumed[k], last["model"][k]) for k in resumed)

    # One process carries on from the two-process run, and says its batches cannot be the same.
    monkeypatch.chdir(workdir)
    train.main([*ARGS, "--out_dir=a", "--max_iters=10", "--init_from=resume"])
    out = capsys.readouterr().out
    assert "a/last.pt was written by 2 processes and this run has 1, so its batches differ" in out
    assert "iter 10/10" in out and "128 tokens per step" in out  # accumulation is global: the same step size


def test_two_processes_take_the_step_of_one_with_all_the_micro_batches(workdir):
    k = 3
    result = torchrun(workdir, WORKER, "step", str(workdir / "ddp.pt"), str(k))
    assert result.returncode == 0, result.stderr
    ddp = torch.load(workdir / "ddp.pt", weights_only=True)
    assert ddp["all_reduces"] == 1  # gradients crossed between processes once: on the last micro-step

    model, optimizer = fresh_model_and_optimizer()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = train.optimizer_step(model, optimizer, fixed_batches(2 * k), torch.autocast("cpu", enabled=False),
                                scaler, 0.0)
    assert ddp["loss"].item() == pytest.approx(loss.item(), abs=1e-6)
    for name, p in model.named_parameters():
        assert (p - before[name]).abs().max() > 1e-4, name  # the step moved it: the comparison means something
        torch.testing.assert_close(ddp["model"][name], p.detach(), atol=1e-5, rtol=0)


def assert_one_error_line(result, *words):
    """The error is printed once, and no process of ours prints a traceback (torchrun adds its own report).

    A process that loses contact with the failed one may add one line saying so.
    """
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")
              and "another process of this job stopped" not in line]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    assert "[rank0]: Traceback" not in result.stderr and "[rank1]: Traceback" not in result.stderr, result.stderr


def test_accumulation_steps_must_divide_among_processes(workdir):
    result = torchrun(workdir, os.path.join(ROOT, "train.py"), *ARGS, "--out_dir=c", "--max_iters=2",
                      "--gradient_accumulation_steps=3", timeout=60)
    assert_one_error_line(result, "gradient_accumulation_steps 3 must be a multiple of the number of processes (2)")


def test_one_failing_rank_ends_the_whole_job(workdir):
    t0 = time.monotonic()
    result = torchrun(workdir, WORKER, "fail", *ARGS, "--out_dir=d", "--max_iters=50", timeout=90)
    assert result.returncode != 0 and "rank 1 fails in its third step" in result.stderr
    assert time.monotonic() - t0 < 60  # rank 0, waiting in an all-reduce, was stopped: no hang
    assert "[rank0]: Traceback" not in result.stderr  # only the failing rank has a traceback to show

    result = torchrun(workdir, WORKER, "bad_rank", *ARGS, "--out_dir=e", "--max_iters=50", timeout=90)
    assert_one_error_line(result, "rank 1: no prepared data in data/missing")


@pytest.mark.parametrize("pos_encoding", ["sinusoidal", "rope"])
def test_every_position_encoding_trains_and_evaluates_on_two_processes(workdir, pos_encoding):
    # The sinusoidal table is a buffer: evaluation must not start a collective (a broadcast
    # of buffers) that only some processes join. (Learned positions run in the test above.)
    t0 = time.monotonic()
    result = torchrun(workdir, os.path.join(ROOT, "train.py"), *ARGS, f"--pos_encoding={pos_encoding}",
                      f"--out_dir={pos_encoding}", "--max_iters=4", "--eval_interval=2", timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines() if line.startswith("step ")] == \
        ["step 0", "step 2", "step 4"]
    assert time.monotonic() - t0 < 90


def test_eval_only_shares_the_split_and_reports_once(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    train.main([*ARGS, "--out_dir=f", "--max_iters=2"])
    alone = train.main([*ARGS, "--out_dir=f", "--eval_only=true"])
    capsys.readouterr()
    result = torchrun(workdir, os.path.join(ROOT, "train.py"), *ARGS, "--out_dir=f", "--eval_only=true",
                      "--gradient_accumulation_steps=1", timeout=90)  # evaluation has no micro-steps to share
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("val loss")]
    assert len(lines) == 1 and f"{alone['loss']:.4f}" in lines[0]  # every target once, over both processes
    assert "destroy_process_group" not in result.stderr  # the process group was taken down


@pytest.mark.parametrize("visible, local_rank, expected", [(8, 3, 3), (1, 3, 0), (1, 0, 0), (4, 0, 0)])
def test_a_process_takes_its_local_ranks_gpu_or_the_one_it_was_shown(monkeypatch, visible, local_rank, expected):
    # Slurm and Kubernetes often show each process one GPU: LOCAL_RANK 3 then owns cuda:0.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert process_device(CUDA, local_rank) == torch.device("cuda", expected)


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match="local rank 3 has no GPU of its own"):
        process_device(CUDA, 3)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # one GPU that every process sees
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(UserError, match="local rank 1 has no GPU of its own"):
        process_device(CUDA, 1)
    assert process_device(torch.device("cpu"), 3) == torch.device("cpu")


def test_the_process_group_waits_an_hour_for_rank_0s_checkpoints(monkeypatch):
    seen = {}
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ddp = setup_distributed(TrainConfig(device="cpu", gradient_accumulation_steps=2))
    assert (ddp.rank, ddp.world_size, seen["backend"]) == (1, 2, "gloo")
    assert seen["timeout"] == optim.COLLECTIVE_TIMEOUT >= datetime.timedelta(minutes=60)


def test_the_model_is_wrapped_in_ddp_before_it_is_compiled(monkeypatch):
    order = []

    class FakeDDP(Distributed):
        def wrap(self, model):
            order.append("ddp")
            return ("wrapped", model)

    monkeypatch.setattr(torch, "compile", lambda model: order.append(("compile", model)) or model)
    train.compiled_for_training("model", FakeDDP(), True)
    assert order == ["ddp", ("compile", ("wrapped", "model"))]
