"""Exact resume: a run stopped at iteration k and resumed takes the same steps as one that never stopped."""
import pytest
import torch

import train
from checkpoint import load_checkpoint
from conftest import TINY_MODEL
from plot import current_records, read_metrics

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


def test_a_last_pt_of_the_previous_version_resumes(uninterrupted, workdir, monkeypatch):
    """Written before vocabularies were padded: embedding rows and their AdamW moments for
    vocab_size tokens only, and no lr_scale in the optimizer's groups."""
    run(workdir / "old", f"--max_iters={K}")
    state = load_checkpoint(workdir / "old" / "last.pt")
    vocab = state["model_config"]["vocab_size"]
    rows = state["model"]["wte.weight"].shape[0]
    assert rows > vocab  # padded now
    for key in ("wte.weight", "lm_head.weight"):
        state["model"][key] = state["model"][key][:vocab].clone()
    for moments in state["optimizer"]["state"].values():
        for name, value in moments.items():
            if value.dim() == 2 and value.shape[0] == rows:
                moments[name] = value[:vocab].clone()
    for group in state["optimizer"]["param_groups"]:
        del group["lr_scale"]
    torch.save(state, workdir / "old" / "last.pt")
    run(workdir / "old", f"--max_iters={2 * K}", "--init_from=resume")
    assert records(workdir / "old", "train") == records(uninterrupted, "train")  # loss for loss
    a, b = load_checkpoint(workdir / "old" / "last.pt")["model"], load_checkpoint(uninterrupted / "last.pt")["model"]
    assert torch.equal(a["wte.weight"][:vocab], b["wte.weight"][:vocab]) and not a["wte.weight"][vocab:].any()
