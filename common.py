"""What every script shares: one-line errors, the device and its precision, processes under torchrun, and MFU."""
import contextlib
import datetime
import importlib.util
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

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


# --------------------------------------------------------------------------- processes under torchrun

# Rank 0 alone writes checkpoints (fsynced) while the other ranks wait in the next
# step's all-reduce. NCCL's default timeout, 10 minutes, is too short for a large
# model's checkpoint on a slow disk; a hung job still ends, an hour later.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)


@dataclass
class Distributed:
    """This process's place in a torchrun job, and the few collective operations training needs.

    Without torchrun it is one process, and every method does nothing.
    """
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = None  # set under torchrun: each process owns one GPU, or the CPU
    ddp_model: DDP = None

    @property
    def enabled(self):
        return dist.is_initialized()

    def wrap(self, model):
        """The model in DistributedDataParallel, which averages gradients across processes."""
        if not self.enabled:
            return model
        # DDP copies rank 0's weights to every rank here, so all start from the same model.
        # The only buffer (the sinusoidal table) is constant: broadcasting it before every
        # forward pass would put a collective into evaluation, which each rank runs alone.
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp_model = DDP(model, device_ids=ids, broadcast_buffers=False)
        return self.ddp_model

    def sync(self, on):
        """Let DDP all-reduce gradients in the coming backward pass, or not (accumulation steps)."""
        if self.ddp_model is not None:
            self.ddp_model.require_backward_grad_sync = on

    def sum(self, tensor):
        """The sum of a tensor over all ranks, on every rank."""
        if self.enabled:
            tensor = tensor.detach().clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def mean(self, tensor):
        return self.sum(tensor) / self.world_size

    def gather(self, obj):
        """[obj of rank 0, obj of rank 1, ...], on every rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def cleanup(self):
        if self.enabled:
            # Every rank arrives before any tears its connections down. Without this, a
            # rank that finished first sometimes aborted at exit under gloo.
            dist.barrier()
            dist.destroy_process_group()


def lost_peer(error):
    """True for the error a process gets in a collective when another process of the job has died.

    gloo reports it as a RuntimeError ("Connection closed by peer"), NCCL as a DistError.
    """
    return dist.is_available() and dist.is_initialized() and (isinstance(error, dist.DistError)
                                                              or "by peer" in str(error))


def process_device(device, local_rank):
    """The GPU a torchrun process takes: its LOCAL_RANK's, or the one GPU a launcher showed it.

    Launchers such as Slurm or Kubernetes often show each process a single GPU
    through CUDA_VISIBLE_DEVICES, so LOCAL_RANK 3 may own what it sees as cuda:0.
    """
    if device.type != "cuda":
        return device
    visible = torch.cuda.device_count()
    if local_rank < visible:
        return torch.device("cuda", local_rank)
    if visible == 1 and os.environ.get("CUDA_VISIBLE_DEVICES"):
        return torch.device("cuda", 0)
    raise UserError(f"local rank {local_rank} has no GPU of its own ({visible} visible); use "
                    "--nproc_per_node at most the number of GPUs, or show each process one GPU")


def setup_distributed(cfg):
    """Join the process group when launched by torchrun; a single process otherwise.

    gradient_accumulation_steps is global: each of the N processes does 1/N of
    the micro-steps, so the tokens per optimizer step do not depend on N.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Distributed()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if not cfg.eval_only and cfg.gradient_accumulation_steps % world != 0:
        raise UserError(f"gradient_accumulation_steps {cfg.gradient_accumulation_steps} must be a multiple of "
                        f"the number of processes ({world}); each process does an equal share of the micro-steps")
    device = process_device(pick_device(cfg.device), local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UserError(f"distributed training needs cuda or cpu, not {device.type}")
    dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT,
                            device_id=device if backend == "nccl" else None)
    return Distributed(rank=rank, local_rank=local_rank, world_size=world, device=device)


# --------------------------------------------------------------------------- throughput

# Dense bf16/fp16 tensor-core peaks (no sparsity), from the vendors' data sheets, FLOP/s.
# Matched in order against torch.cuda.get_device_name, so more specific names come first:
# an H100 SXM reports itself as "NVIDIA H100 80GB HBM3", a PCIe card as "NVIDIA H100 PCIe".
GPU_PEAK_FLOPS = [
    ("B200", 2250e12), ("H200 NVL", 835e12), ("H200", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12),
    ("H100", 989e12), ("A100", 312e12), ("A10G", 125e12), ("A10", 125e12), ("L40S", 362e12), ("L40", 181e12),
    ("L4", 121e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("V100", 125e12), ("T4", 65e12),
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
