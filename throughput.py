"""Honest throughput figures: FLOPs per token, the device's peak, and model FLOPs utilisation."""
import time

import torch

# Dense bf16/fp16 tensor-core peaks (no sparsity), from the vendors' data sheets, FLOP/s.
# Matched in order against torch.cuda.get_device_name, so more specific names come first:
# an H100 SXM reports itself as "NVIDIA H100 80GB HBM3", a PCIe card as "NVIDIA H100 PCIe".
GPU_PEAK_FLOPS = [
    ("H200", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12),
    ("A100", 312e12), ("A10G", 125e12), ("A10", 125e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
    ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("V100", 125e12), ("T4", 65e12),
]


def flops_per_token(config, n_params):
    """Training FLOPs per token (PaLM, Chowdhery et al. 2022, appendix B).

    6N for the weights: forward and backward multiply each parameter three times,
    two FLOPs a multiply-add. Plus 12 * n_layer * n_embd * block_size for attention's
    scores and weighted sums, which have no parameters.
    """
    if config.arch == "bigram":
        return 6 * n_params
    return 6 * n_params + 12 * config.n_layer * config.n_embd * config.block_size


_cpu_peak_cache = {}


def measure_cpu_peak(dtype, size=1536, repeats=5):
    """Matmul FLOP/s this CPU reaches in `dtype`: the ceiling a training step could hit.

    1536 x 1536: on two Zen 4 cores fp32 at 1024 ranged from 153 to 187 GFLOP/s over
    three measurements (so MFU read up to 93%), at 1536 from 187 to 190, in 0.26 s.
    """
    if dtype in _cpu_peak_cache:
        return _cpu_peak_cache[dtype]
    gen = torch.Generator().manual_seed(0)  # its own generator: measuring must not move training's
    a = torch.randn(size, size, generator=gen).to(dtype)
    b = torch.randn(size, size, generator=gen).to(dtype)
    a @ b  # warm up the kernels
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    _cpu_peak_cache[dtype] = 2 * size ** 3 / best
    return _cpu_peak_cache[dtype]


def gpu_peak_flops(name):
    """The bf16 peak of a GPU by its name, or None for a GPU not in the table."""
    return next((flops for key, flops in GPU_PEAK_FLOPS if key in name), None)


def peak_flops(device, dtype):
    """The device's peak FLOP/s in `dtype`, or None where it is not known."""
    if device.type == "cuda":
        if dtype == torch.float32:
            return None  # fp32 peaks depend on TF32 settings
        return gpu_peak_flops(torch.cuda.get_device_name(device))
    if device.type == "cpu":
        return measure_cpu_peak(dtype)
    return None


def mfu(tokens_per_second, flops_per_tok, peak):
    """Model FLOPs utilisation: achieved model FLOP/s over the peak, or None without a peak."""
    if not peak:
        return None
    return tokens_per_second * flops_per_tok / peak
