"""Where a run computes, and in what precision: resolved once, used by every script."""
import contextlib

import torch

from errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name="auto"):
    """'auto' means cuda, then mps, then cpu. An unavailable device is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but this machine has no CUDA GPU; use --device=cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {name!r} asked for, but MPS is not available here; use --device=cpu or auto")
    return device


def cpu_has_bf16_matmul():
    """True where the CPU multiplies bf16 matrices natively (Intel AMX or AVX512-BF16).

    There bf16 matmuls run about 5x faster than fp32; elsewhere bf16 is emulated and slower.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_dtype(name, device):
    """The autocast dtype: an explicit name, or 'auto' chosen for the device.

    auto: bf16 on CUDA GPUs that support it, else fp16 (with a gradient scaler);
    bf16 on CPUs with native bf16 matrix units, else fp32; fp32 on MPS, whose
    autocast does not yet cover every op training uses.
    """
    if name != "auto":
        if name not in DTYPES:
            raise UserError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16")
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16_matmul():
        return torch.bfloat16
    return torch.float32


def autocast(device, dtype):
    """Mixed precision for the forward pass; a no-op in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
