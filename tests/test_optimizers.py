"""optimizer='muon': Muon for the blocks' matrices, AdamW for the rest, resumable like AdamW."""
import pytest
import torch

import train
from conftest import TINY_MODEL
from common import UserError
from model import GPT, GPTConfig
from optim import Muon, OptimizerSet, build_optimizer, orthogonalize
from settings import TrainConfig, load_settings
from test_resume import K, assert_same_run, run


def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=65, n_layer=2, n_head=2, n_embd=32, block_size=16, bias=True))


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = tiny_gpt()
    opt = build_optimizer(model, TrainConfig(optimizer="muon", learning_rate=1e-3, muon_learning_rate=0.02))
    muon = [p for g in opt.optimizers["muon"].param_groups for p in g["params"]]
    adamw = [p for g in opt.optimizers["adamw"].param_groups for p in g["params"]]
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in muon) == sorted(
        n for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2)
    assert {names[id(p)] for p in adamw} >= {"wte.weight", "wpe.weight", "ln_f.weight", "blocks.0.ln_1.bias"}
    assert len(muon) + len(adamw) == len(list(model.parameters()))  # each parameter once
    assert {g["lr_scale"] for g in opt.optimizers["muon"].param_groups} == {20.0}  # 0.02 / 1e-3
    assert {g["lr_scale"] for g in opt.optimizers["adamw"].param_groups} == {1.0}


def test_muon_lowers_the_loss():
    model = tiny_gpt()
    opt = build_optimizer(model, TrainConfig(optimizer="muon", learning_rate=3e-3, muon_learning_rate=0.02))
    x = torch.randint(0, 65, (4, 16))
    y = torch.roll(x, -1, dims=1)
    first = None
    for _ in range(20):
        _, loss = model(x, y)
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert torch.isfinite(loss) and loss.item() < first - 1.0


def test_muon_run_resumes_exactly(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    run(workdir / "a", f"--max_iters={2 * K}", "--optimizer=muon")
    run(workdir / "b", f"--max_iters={K}", "--optimizer=muon")
    run(workdir / "b", f"--max_iters={2 * K}", "--optimizer=muon", "--init_from=resume")
    assert_same_run(workdir / "a", workdir / "b")


def test_resuming_with_the_other_optimizer_is_refused(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    run(workdir / "a", f"--max_iters={K}", "--optimizer=muon")
    with pytest.raises(UserError, match="trained with optimizer='muon'.*--optimizer=muon"):
        run(workdir / "a", f"--max_iters={2 * K}", "--init_from=resume")


def test_optimizer_set_refuses_another_state():
    opt = build_optimizer(tiny_gpt(), TrainConfig(optimizer="muon"))
    assert isinstance(opt, OptimizerSet)
    with pytest.raises(ValueError, match="other optimizers"):
        opt.load_state_dict(torch.optim.AdamW(tiny_gpt().parameters()).state_dict())


def test_unknown_optimizer_is_refused():
    with pytest.raises(UserError, match="optimizer must be 'adamw' or 'muon'"):
        load_settings(["--optimizer=sgd", *TINY_MODEL])


def test_the_step_rate_follows_the_schedule_at_each_optimizers_scale(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    seen = []
    real_step = train.optimizer_step

    def recording_step(model, optimizer, *args, **kwargs):
        seen.append({g["lr"] / g["lr_scale"] for g in optimizer.param_groups})
        return real_step(model, optimizer, *args, **kwargs)

    monkeypatch.setattr(train, "optimizer_step", recording_step)
    run(workdir / "a", "--max_iters=4", "--optimizer=muon")
    assert all(len(rates) == 1 for rates in seen)  # every group at the same point of the schedule
    assert [r.pop() for r in seen] == pytest.approx([train.get_lr(s, load_settings(
        ["--max_iters=4", "--warmup_iters=2", f"--lr_decay_iters={2 * K}", "--learning_rate=3e-3"])[0])
        for s in range(4)])


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_adamw_is_fused_on_cpu(name):
    opt = build_optimizer(tiny_gpt(), TrainConfig(optimizer=name))
    adamw = opt if name == "adamw" else opt.optimizers["adamw"]
    assert all(group["fused"] for group in adamw.param_groups)


def test_fused_adamw_steps_as_the_unfused_one():
    cfg = TrainConfig(optimizer="adamw", learning_rate=1e-2)
    fused_model, plain_model = tiny_gpt(), tiny_gpt()
    fused = build_optimizer(fused_model, cfg)
    plain = plain_model.configure_optimizer(cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2))
    gen = torch.Generator().manual_seed(0)
    # The same fixed gradients for both (computed ones would depend on the weights, and
    # magnify rounding); ten steps, so the moments and their betas count, not only lr * sign(g).
    for _ in range(10):
        grads = [torch.randn(p.shape, generator=gen) for p in fused_model.parameters()]
        for model, opt in ((fused_model, fused), (plain_model, plain)):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert not torch.equal(fused_model.wte.weight, tiny_gpt().wte.weight)  # it moved


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_resuming_keeps_this_machines_adamw_kernel(name):
    # A checkpoint from an unfused AdamW (written on another machine, or by another
    # version) must not unfuse this one: fused AdamW takes GradScaler's scale in its step.
    from checkpoint import restore_optimizer
    cfg = TrainConfig(optimizer=name)
    idx = torch.randint(0, 65, (2, 16), generator=torch.Generator().manual_seed(0))
    saved_model = tiny_gpt()
    saved = build_optimizer(saved_model, cfg)
    for group in (saved if name == "adamw" else saved.optimizers["adamw"]).param_groups:
        group["fused"] = None  # as an unfused run saves it
    saved_model(idx, idx)[1].backward()
    saved.step()
    state = {"optimizer": saved.state_dict(), "train_config": {"optimizer": name}}

    model = tiny_gpt()
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    restore_optimizer(state, optimizer, scaler, "last.pt", name)
    adamw = optimizer if name == "adamw" else optimizer.optimizers["adamw"]
    assert all(group["fused"] for group in adamw.param_groups)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(idx, idx)[1]
    scaler.scale(loss).backward()
    scaler.step(optimizer)  # an unfused group under a fused optimizer raised here
    scaler.update()


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon arrived in PyTorch 2.9")
def test_muon_steps_as_torchs_muon():
    torch.manual_seed(0)
    weights = [torch.randn(48, 16), torch.randn(16, 48), torch.randn(32, 32)]  # tall, wide, square
    ours = [w.clone().requires_grad_() for w in weights]
    theirs = [w.clone().requires_grad_() for w in weights]
    mine = Muon(ours, lr=0.02, ns_dtype=torch.bfloat16)
    reference = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.0, momentum=0.95, adjust_lr_fn="original")
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        grads = [torch.randn(w.shape, generator=gen) for w in weights]
        for params, opt in ((ours, mine), (theirs, reference)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for a, b, w in zip(ours, theirs, weights):
        assert (a - w).abs().max() > 0.01  # it moved
        assert torch.allclose(a, b, atol=1e-3), (a - b).abs().max()  # bf16 both: the same arithmetic


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (32, 32)])
def test_orthogonalize_in_fp32_sets_every_singular_value_near_one(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    singular = torch.linalg.svdvals(orthogonalize(g, dtype=torch.float32))
    assert singular.min() > 0.6 and singular.max() < 1.25  # the quintic's band: about 0.7 to 1.2
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    cosine = torch.nn.functional.cosine_similarity(orthogonalize(g).flatten(), (u @ vh).flatten(), dim=0)
    assert cosine > 0.97  # close to U V^T itself


@pytest.mark.parametrize("native, dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_muon_orthogonalizes_in_bf16_only_where_the_cpu_has_it(monkeypatch, native, dtype):
    import common
    monkeypatch.setattr(common, "cpu_has_bf16_matmul", lambda: native)
    opt = build_optimizer(tiny_gpt(), TrainConfig(optimizer="muon"))
    assert opt.optimizers["muon"].ns_dtype == dtype
