"""The paths of GPUs, Macs and torchrun launchers, exercised on a CPU with the device's answers patched."""
import datetime
import os

import pytest
import torch

import checkpoint
import common
import generate
import train
from common import Distributed, UserError, process_device, setup_distributed
from conftest import TINY_MODEL
from model import GPT, GPTConfig, angle_dtype, rotary_cos_sin
from settings import TrainConfig

CUDA = torch.device("cuda")


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
    assert seen["timeout"] == common.COLLECTIVE_TIMEOUT >= datetime.timedelta(minutes=60)


def test_the_model_is_wrapped_in_ddp_before_it_is_compiled(monkeypatch):
    order = []

    class FakeDDP(Distributed):
        def wrap(self, model):
            order.append("ddp")
            return ("wrapped", model)

    monkeypatch.setattr(torch, "compile", lambda model: order.append(("compile", model)) or model)
    train.compiled_for_training("model", FakeDDP(), True)
    assert order == ["ddp", ("compile", ("wrapped", "model"))]


@pytest.mark.parametrize("capability, triton, expected", [((8, 0), True, True), ((6, 0), True, False),
                                                          ((9, 0), False, False)])
def test_compile_is_on_by_default_on_gpus_its_compiler_serves(monkeypatch, capability, triton, expected):
    import importlib.util
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: (object() if triton else None)
                        if name == "triton" else real_find_spec(name))
    assert TrainConfig().compiles(CUDA) is expected  # a P100 or no Triton: eager, not a failed first step
    assert not TrainConfig().compiles(torch.device("cpu")) and not TrainConfig(compile="false").compiles(CUDA)
    assert TrainConfig(compile="true").compiles(torch.device("cpu"))
    assert TrainConfig(compile=True).compile == TrainConfig(compile="1").compile == "true"  # as users write it


def test_cuda_runs_allow_tf32_and_deterministic_runs_ask_for_it():
    precision, deterministic = torch.get_float32_matmul_precision(), torch.are_deterministic_algorithms_enabled()
    try:
        train.set_up_device(CUDA, TrainConfig())
        assert torch.get_float32_matmul_precision() == "high"
        train.set_up_device(torch.device("cpu"), TrainConfig(deterministic=True))
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.use_deterministic_algorithms(deterministic)


def test_rotary_angles_are_float32_where_the_device_has_no_float64():
    assert angle_dtype(torch.device("mps")) == torch.float32
    assert angle_dtype(torch.device("cpu")) == angle_dtype(CUDA) == torch.float64
    cos, sin = rotary_cos_sin(torch.arange(4), 8)
    assert cos.dtype == sin.dtype == torch.float32 and cos.shape == (4, 4)


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
    # Earlier versions saved every visible GPU's state: a machine with fewer GPUs takes its own, or none.
    old = dict(state, cuda=[torch.zeros(4, dtype=torch.uint8), torch.ones(4, dtype=torch.uint8)])
    checkpoint.set_rng_state(old, torch.device("cuda", 1))
    assert torch.equal(restored[-1][1], torch.ones(4, dtype=torch.uint8))
    count = len(restored)
    checkpoint.set_rng_state(old, gpu3)
    assert len(restored) == count


def test_evaluation_waits_for_the_device_once_per_split(workdir, monkeypatch):
    from train import Batches, load_dataset
    cfg = TrainConfig(dataset="tiny", data_root=str(workdir / "data"), batch_size=2)
    _, splits = load_dataset(cfg)
    model = GPT(GPTConfig(vocab_size=64, n_layer=1, n_head=2, n_embd=16, block_size=8))
    gen = torch.Generator().manual_seed(0)
    batches = {s: Batches(splits[s], 8, 2, torch.device("cpu"), gen) for s in splits}
    reads, real_item = [], torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append(1) or real_item(t))
    losses = train.estimate_loss(model, batches, 5, torch.autocast("cpu", enabled=False), Distributed())
    assert set(losses) == {"train", "val"} and len(reads) == 2


def test_generation_scores_the_prompts_last_position_only():
    model = GPT(GPTConfig(vocab_size=64, n_layer=1, n_head=2, n_embd=16, block_size=32)).eval()
    rows = []
    model.lm_head.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[1]))
    list(generate.generate_tokens(model, torch.zeros(2, 20, dtype=torch.long), 3))
    assert rows == [1, 1, 1]  # the 20-token prompt, then two steps (the third token needs no logits)


def test_weights_are_cast_before_they_move(tmp_path, monkeypatch):
    from dataclasses import asdict
    from checkpoint import save_checkpoint
    from prepare import CharTokenizer
    model = GPT(GPTConfig(vocab_size=3, n_layer=1, n_head=2, n_embd=16, block_size=8))
    save_checkpoint({"model": model.state_dict(), "model_config": asdict(model.config),
                     "tokenizer": CharTokenizer("abc").to_meta()}, str(tmp_path / "ckpt.pt"))
    moves, real_to = [], torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moves.append(a) or real_to(self, *a, **k))
    generate.load(str(tmp_path), device="cpu", dtype="bfloat16")
    assert moves == [(torch.bfloat16,), (torch.device("cpu"),)]  # half the bytes cross to a GPU


def test_one_process_per_machine_downloads_gpt2(monkeypatch):
    import gpt2
    calls = []
    monkeypatch.setattr(gpt2, "resolve", lambda source: calls.append(("resolve", source)))
    monkeypatch.setattr(gpt2, "load_pretrained", lambda source, dropout: calls.append("load") or GPT(
        GPTConfig(vocab_size=50257, n_layer=1, n_head=2, n_embd=16, block_size=8)))

    class Rank(Distributed):
        def barrier(self):
            calls.append("barrier")

    meta = {"tokenizer": "gpt2", "vocab_size": 50257}
    cfg, model_cfg = TrainConfig(init_from="gpt2"), GPTConfig(block_size=8)
    train.init_model(cfg, model_cfg, meta, Rank(rank=1, local_rank=1, world_size=2))
    assert calls == ["barrier", "load"]
    calls.clear()
    train.init_model(cfg, model_cfg, meta, Rank(rank=2, local_rank=0, world_size=4))
    assert calls == [("resolve", "gpt2"), "barrier", "load"]


def test_gpt2_downloads_into_files_of_unique_names(tmp_path, monkeypatch):
    import gpt2
    names = []
    real_mkstemp = gpt2.tempfile.mkstemp
    monkeypatch.setattr(gpt2.tempfile, "mkstemp", lambda **k: names.append(k) or real_mkstemp(**k))
    monkeypatch.setattr(gpt2, "HUB_URL", (tmp_path / "nowhere").as_uri() + "/{name}/{file}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(UserError):
        gpt2.download("gpt2")
    assert names and names[0]["dir"] == str(tmp_path / "cache" / "scratchgpt" / "gpt2")
    assert os.listdir(names[0]["dir"]) == []  # the failed download's file is gone


def test_the_mps_generator_is_saved_and_restored(monkeypatch):
    state, restored = torch.arange(8, dtype=torch.uint8), []
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: state)
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda s: restored.append(s))
    saved = checkpoint.rng_state(torch.device("mps"))
    checkpoint.set_rng_state(saved, torch.device("mps"))
    assert torch.equal(saved["mps"], state) and torch.equal(restored[0], state)
