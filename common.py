"""What every script shares: one-line errors, files written whole, downloads, a progress bar,
and the device with its precision."""
import contextlib
import errno
import importlib.util
import os
import sys
import time
import urllib.request

import torch

# --------------------------------------------------------------------------- errors

# Under torchrun every rank usually meets the same mistake at the same moment. Rank 0
# says it at once; torchrun then stops the other ranks, which wait this long before
# speaking, so the line is printed once. An error only one rank meets is still printed.
OTHER_RANK_DELAY_S = 5.0


class UserError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def run_main(main):
    """Run `main()`, printing a UserError as `error: ...` and exiting with status 1."""
    try:
        return main()
    except UserError as e:
        rank = os.environ.get("RANK", "0")  # set by torchrun
        if rank != "0":
            time.sleep(OTHER_RANK_DELAY_S)
        print(f"error: {'' if rank == '0' else f'rank {rank}: '}{e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


# --------------------------------------------------------------------------- files

def write_pending(path, write):
    """Call write(f) on a new binary file beside path, flushed to disk; returns its name.

    Nothing at path changes until commit(); a crash leaves at most that one `.tmp` file.
    """
    tmp = f"{path}.tmp"  # one name, so a run killed while writing leaves one stray file, not one per try
    with _writing(path, tmp):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    return tmp


def commit(tmp, path):
    """Rename tmp over path (atomic on POSIX and Windows), then make the rename itself durable."""
    with _writing(path, tmp):
        os.replace(tmp, path)
        if os.name == "posix":  # a folder's entries reach the disk with an fsync of the folder
            dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def atomic_write(path, write):
    """Write a file whole or not at all: the old file at path stays intact until the new one is complete."""
    commit(write_pending(path, write), path)


def discard(tmp):
    if tmp and os.path.exists(tmp):
        os.remove(tmp)


@contextlib.contextmanager
def _writing(path, tmp):
    """Turn a failed write into one clear line, removing the partial file; path is never touched."""
    try:
        yield
    except OSError as e:
        with contextlib.suppress(OSError):
            discard(tmp)
        folder = os.path.dirname(os.path.abspath(path))
        if e.errno == errno.ENOSPC:
            raise UserError(f"out of disk space while saving {path}; the previous file there is intact. "
                            "Free some space and run again (training: --init_from=resume)") from None
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise UserError(f"cannot write to {folder} ({e.strerror}); choose another folder (--out_dir)") from None
        raise UserError(f"could not save {path} ({e.strerror or e}); the previous file there is intact") from None


def download(url, path, offline):
    """Fetch url to path, whole or not at all; `offline` says what to do instead, in the one-line
    error of a failed download.

    The bytes arrive in a temporary file of a unique name, renamed when complete, so
    processes sharing a cache folder (machines on one filesystem) never write into
    each other's file, and an interrupted download is never taken for a whole one.
    """
    print(f"downloading {url}", file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.part"
    progress = None
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            progress = Progress(int(response.headers.get("Content-Length") or 0), os.path.basename(path))
            while block := response.read(1 << 20):
                f.write(block)
                progress.advance(len(block))
        os.replace(tmp, path)
    except OSError as e:  # URLError, HTTPError, timeouts, a full disk
        discard(tmp)
        raise UserError(f"download of {url} failed ({getattr(e, 'reason', None) or e}); with no internet, "
                        f"{offline}") from None
    finally:
        if progress is not None:
            progress.close()  # ends the progress line, so an error starts on a line of its own


class Progress:
    """A one-line progress bar on stderr: bytes of input done, MB/s, tokens, and the time left when the total is known."""

    def __init__(self, total_bytes, label, done=0):
        self.total, self.label, self.done, self.counted, self.tokens = total_bytes, label, done, 0, 0
        self.t0 = self.last = time.time()

    def advance(self, n_bytes, tokens=0, counted=True):
        """n_bytes more done; counted=False for input skipped (it adds to the total, not to the rate)."""
        self.done += n_bytes
        self.counted += n_bytes if counted else 0
        self.tokens += tokens
        now = time.time()
        if now - self.last < 0.2 and self.done < self.total:
            return
        self.last = now
        rate = self.counted / max(now - self.t0, 1e-9)
        line = f"{self.done / 1e6:,.0f} MB"
        if self.total:
            frac = min(self.done / self.total, 1.0)
            left = max(self.total - self.done, 0) / max(rate, 1)
            line = f"[{'#' * int(30 * frac):<30}] {100 * frac:5.1f}%, eta {left:,.0f}s"
        tokens = f", {self.tokens:,} tokens" if self.tokens else ""
        print(f"\r{self.label} {line}, {rate / 1e6:.1f} MB/s{tokens}   ", end="", file=sys.stderr, flush=True)

    def close(self):
        print(file=sys.stderr)


# --------------------------------------------------------------------------- device and precision

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
    """True where the CPU multiplies bf16 matrices in hardware (AMX or AVX512-BF16) and PyTorch uses it.

    Elsewhere (AVX2-only CPUs, or PyTorch held to AVX2 by ATEN_CPU_CAPABILITY=avx2)
    bf16 is emulated, and a bf16 matmul is many times slower than an fp32 one.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:  # macOS, Windows: no such file, and no bf16 claimed
        return False
    hardware = "amx_bf16" in flags or "avx512_bf16" in flags
    return hardware and torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def native_bf16(device):
    """Whether this device computes bf16 matmuls in hardware, faster than fp32."""
    if device.type == "cuda":
        # is_bf16_supported() alone also says yes where bf16 is emulated (V100, T4, RTX 20xx).
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "mps":
        return torch.backends.mps.is_macos_or_newer(14, 0)  # bf16 arrived in macOS 14's Metal
    return cpu_has_bf16_matmul()


def pick_dtype(name, device):
    """The precision of the forward pass: an explicit name, or 'auto' chosen for the device.

    auto: bf16 wherever the device computes it in hardware (CUDA from Ampere on,
    Apple GPUs on macOS 14 and later, CPUs with AMX or AVX512-BF16); elsewhere fp16
    with a gradient scaler on CUDA, and fp32 on CPUs and older Macs.
    """
    if name != "auto":
        if name not in DTYPES:
            raise UserError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16")
        return DTYPES[name]
    if native_bf16(device):
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else torch.float32


def can_compile(device):
    """Whether torch.compile's default backend can build kernels for this device: a CUDA GPU of
    compute capability 7.0 or later, with Triton installed (not the case on Windows, P100, K80)."""
    return (device.type == "cuda" and torch.cuda.get_device_capability(device) >= (7, 0)
            and importlib.util.find_spec("triton") is not None)


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


# Dense bf16/fp16 tensor-core peaks (no sparsity), from the vendors' data sheets, FLOP/s.
# Matched in order against torch.cuda.get_device_name, so more specific names come first:
# an H100 SXM reports itself as "NVIDIA H100 80GB HBM3", a PCIe card as "NVIDIA H100 PCIe".
GPU_PEAK_FLOPS = [
    ("B200", 2250e12), ("H200 NVL", 835e12), ("H200", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12),
    ("H100", 989e12), ("A100", 312e12), ("A10G", 125e12), ("A10", 125e12), ("L40S", 362e12), ("L40", 181e12),
    ("L4", 121e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("V100", 125e12), ("T4", 65e12),
]

_cpu_peaks = {}


def measure_cpu_peak(dtype, size=1536, repeats=5):
    """Matmul FLOP/s this CPU reaches in `dtype`: the ceiling a training step could hit.

    1536 x 1536 is large enough for a steady figure (1024 varied by 20% between
    measurements) and takes a fraction of a second.
    """
    if dtype not in _cpu_peaks:
        gen = torch.Generator().manual_seed(0)  # its own generator: measuring must not move training's
        a = torch.randn(size, size, generator=gen).to(dtype)
        b = torch.randn(size, size, generator=gen).to(dtype)
        a @ b  # warm up the kernels
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        _cpu_peaks[dtype] = 2 * size ** 3 / best
    return _cpu_peaks[dtype]


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
