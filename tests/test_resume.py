"""Exact resume: a run stopped at iteration k and resumed takes the same steps as one that never stopped."""
import pytest
import torch

import checkpoint
import train
from checkpoint import load_checkpoint
from conftest import TINY_MODEL
from eval import current_records, read_metrics

K = 6  # stop here; the uninterrupted run goes to 2K
# Dropout on, so the resumed run must restore torch's generator too; a schedule that does not
# depend on max_iters, so a run told to stop at K has the same learning rates as one going to 2K.
COMMON = ["--dataset=tiny", *TINY_MODEL, "--dropout=0.1", "--eval_interval=3", "--checkpoint_interval=3",
          "--warmup_iters=2", f"--lr_decay_iters={2 * K}", "--learning_rate=3e-3"]


def run(out, *extra):
    return train.main([*COMMON, f"--out_dir={out}", *extra])


def records(out, kind):
    """(iter, figures) of each record of a kind, as the run stands after any resumes."""
    keys = {"train": ("loss", "lr"), "eval": ("train_loss", "val_loss")}[kind]
    kept = current_records(read_metrics(out / "metrics.jsonl"))
    return [(r["iter"], *(r[k] for k in keys)) for r in kept if r["kind"] == kind]


def assert_same_run(a, b):
    assert records(a, "train") == records(b, "train")  # every step's loss and learning rate, exactly
    assert [r[0] for r in records(a, "train")] == list(range(1, 2 * K + 1))
    assert records(a, "eval") == records(b, "eval")
    for name in ("last.pt", "ckpt.pt"):
        wa, wb = load_checkpoint(a / name)["model"], load_checkpoint(b / name)["model"]
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), f"{name}: {key} differs"


@pytest.fixture
def uninterrupted(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    result = run(workdir / "a", f"--max_iters={2 * K}")
    assert len(result["losses"]) == 2 * K
    return workdir / "a"


def test_stopped_at_k_and_resumed_equals_uninterrupted(uninterrupted, workdir, monkeypatch, capsys):
    """A run that ends at K (its own last step) and is resumed with a larger max_iters."""
    run(workdir / "b", f"--max_iters={K}")
    result = run(workdir / "b", f"--max_iters={2 * K}", "--init_from=resume")
    assert len(result["losses"]) == K
    out = capsys.readouterr().out
    assert "resuming with changed settings: max_iters 6 -> 12" in out
    assert f"resuming from iteration {K}" in out
    assert_same_run(uninterrupted, workdir / "b")


def test_interrupted_run_resumes_exactly(uninterrupted, workdir, monkeypatch):
    """A run to 2K interrupted mid-step, two steps after its checkpoint at K, then resumed."""
    real_step, calls = train.optimizer_step, []

    def interrupted_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == K + 3:
            raise KeyboardInterrupt  # as Ctrl-C would, in the middle of a step
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train, "optimizer_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        run(workdir / "c", f"--max_iters={2 * K}")
    monkeypatch.setattr(train, "optimizer_step", real_step)
    assert load_checkpoint(workdir / "c" / "last.pt")["iter_num"] == K
    run(workdir / "c", f"--max_iters={2 * K}", "--init_from=resume")
    assert_same_run(uninterrupted, workdir / "c")


def test_changed_learning_rates_apply_on_resume(workdir, monkeypatch):
    """Each optimizer's share of the schedule comes from the settings of the run that resumes."""
    monkeypatch.chdir(workdir)
    run(workdir / "m", f"--max_iters={K}", "--optimizer=muon", "--muon_learning_rate=0.02")
    seen, real_step = [], train.optimizer_step
    monkeypatch.setattr(train, "optimizer_step", lambda model, opt, *a, **k: seen.append(
        sorted({g["lr_scale"] for g in opt.param_groups})) or real_step(model, opt, *a, **k))
    run(workdir / "m", f"--max_iters={K + 1}", "--optimizer=muon", "--muon_learning_rate=0.006", "--init_from=resume")
    assert seen == [[1.0, 2.0]]  # 0.006 / 3e-3, not the saved 0.02 / 3e-3


def test_resuming_reads_the_checkpoint_into_cpu_memory(workdir, monkeypatch):
    """Loaded onto a GPU, the saved generator states would arrive as GPU tensors, which
    torch.Generator.set_state refuses. Here any load not to the CPU lands on the meta device."""
    monkeypatch.chdir(workdir)
    args = ["--dataset=tiny", "--out_dir=out", "--eval_interval=2", "--checkpoint_interval=2", *TINY_MODEL]
    train.main([*args, "--max_iters=2"])
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, map_location=None, **k: real_load(
        *a, map_location="cpu" if map_location == "cpu" else "meta", **k))
    assert len(train.main([*args, "--max_iters=4", "--init_from=resume"])["losses"]) == 2


def test_the_random_state_of_this_processs_gpu_alone_is_saved_and_restored(monkeypatch):
    saved, restored = {}, []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: saved.setdefault(device, torch.full((4,), 7,
                                                                                       dtype=torch.uint8)))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((device, state)))
    gpu3 = torch.device("cuda", 3)
    state = checkpoint.rng_state(gpu3)
    assert list(saved) == [gpu3] and torch.equal(state["cuda"], saved[gpu3])
    checkpoint.set_rng_state(state, gpu3)
    assert restored[-1][0] == gpu3 and torch.equal(restored[-1][1], saved[gpu3])
    count = len(restored)
    checkpoint.set_rng_state(state, torch.device("cpu"))  # resumed on a CPU: no GPU state to restore
    assert len(restored) == count


def test_the_mps_generator_is_saved_and_restored(monkeypatch):
    state, restored = torch.arange(8, dtype=torch.uint8), []
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: state)
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda s: restored.append(s))
    saved = checkpoint.rng_state(torch.device("mps"))
    checkpoint.set_rng_state(saved, torch.device("mps"))
    assert torch.equal(saved["mps"], state) and torch.equal(restored[0], state)
