"""Devices and their precision, on a CPU with the device's answers patched: what dtype and compile
setting each device gets, the switches a GPU run sets, and the throughput arithmetic (MFU)."""
import math

import pytest
import torch

import common
import train
from common import UserError, autocast, gpu_peak_flops, mfu, pick_dtype
from model import GPT, GPTConfig
from settings import TrainConfig
from train import optimizer_step

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


def test_cuda_gets_bf16_where_computed_in_hardware_else_fp16(monkeypatch):
    def ampere(including_emulation=True):
        return True

    def volta(including_emulation=True):  # V100, T4, RTX 20xx: bf16 only emulated
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", ampere)
    assert pick_dtype("auto", CUDA) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", volta)
    assert pick_dtype("auto", CUDA) == torch.float16


@pytest.mark.parametrize("native", [True, False])
def test_cpu_gets_bf16_only_with_native_bf16_matmul(monkeypatch, native):
    monkeypatch.setattr(common, "cpu_has_bf16_matmul", lambda: native)
    assert pick_dtype("auto", CPU) == (torch.bfloat16 if native else torch.float32)


def test_bf16_instructions_count_only_where_pytorch_uses_them(monkeypatch):
    # ATEN_CPU_CAPABILITY=avx2 holds PyTorch to AVX2 kernels, as on a CPU without bf16.
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not common.cpu_has_bf16_matmul()


@pytest.mark.parametrize("macos_14, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_macs_get_bf16_from_macos_14(monkeypatch, macos_14, expected):
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: macos_14)
    assert pick_dtype("auto", MPS) == expected


def test_explicit_dtype_names_win():
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        assert pick_dtype(name, CPU) == dtype and pick_dtype(name, CUDA) == dtype and pick_dtype(name, MPS) == dtype
    with pytest.raises(UserError, match="unknown dtype"):
        pick_dtype("fp8", CPU)


def test_autocast_runs_matmuls_in_the_chosen_dtype():
    a, b = torch.randn(4, 8), torch.randn(8, 4)
    with autocast(CPU, torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(CPU, torch.float32):
        assert (a @ b).dtype == torch.float32


def train_losses(dtype, steps=30):
    """Losses of `steps` optimizer steps on one fixed batch, from the same initial weights."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, n_layer=2, n_head=2, n_embd=64, block_size=32))
    optimizer = model.configure_optimizer(3e-3, 0.1, (0.9, 0.99))
    scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16)
    batch = torch.randint(0, 65, (4, 33), generator=torch.Generator().manual_seed(1))
    micro = [(batch[:, :-1], batch[:, 1:])]
    return [optimizer_step(model, optimizer, micro, autocast(CPU, dtype), scaler, 1.0).item() for _ in range(steps)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_mixed_precision_step_lowers_the_loss_like_fp32(dtype):
    fp32, mixed = train_losses(torch.float32), train_losses(dtype)
    assert all(math.isfinite(x) for x in mixed)
    assert abs(mixed[0] - fp32[0]) < 0.05  # the same model and batch: only rounding differs
    assert mixed[-1] < mixed[0] - 1.0 and fp32[-1] < fp32[0] - 1.0  # both learn the batch
    assert abs(mixed[-1] - fp32[-1]) < 0.25 * fp32[0]


def test_flops_per_token_of_gpt2_small():
    config = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    with torch.device("meta"):  # shapes only: no memory, no time
        model = GPT(config)
        n = model.num_params()
    # GPT-2 small (124.4M) without its position table, with 47 rows of padding (50,304 - 50,257)
    assert n == 124_439_808 - 1024 * 768 + 47 * 768
    # 6N for the weights plus 12 * layers * width * context for attention: 742.1M + 113.2M
    assert model.flops_per_token() == 6 * n + 12 * 12 * 768 * 1024 == 855_383_040


def test_mfu_is_achieved_flops_over_peak():
    # 10,000 tokens/s at 1e9 FLOPs each is 1e13 FLOP/s: 5% of a 2e14 peak.
    assert mfu(10_000, 1e9, 2e14) == pytest.approx(0.05)
    assert mfu(10_000, 1e9, None) is None


def test_gpu_peaks_match_the_names_cards_report():
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12  # SXM
    assert gpu_peak_flops("NVIDIA H100 PCIe") == 756e12 and gpu_peak_flops("NVIDIA H100 NVL") == 835e12
    assert gpu_peak_flops("NVIDIA H200") == 989e12 and gpu_peak_flops("NVIDIA H200 NVL") == 835e12
    assert gpu_peak_flops("NVIDIA GH200 480GB") == 989e12  # Grace Hopper: an H100-class GPU
    assert gpu_peak_flops("NVIDIA A100-SXM4-40GB") == 312e12
    assert gpu_peak_flops("NVIDIA L40S") == 362e12 and gpu_peak_flops("NVIDIA L4") == 121e12
    assert gpu_peak_flops("Some Future GPU") is None


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
