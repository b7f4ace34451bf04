"""Where the model runs and in which precision.

Device: CUDA > MPS > CPU when DEVICE=auto; an explicit device that is absent is a ConfigError.
Dtype: an explicit DTYPE wins; otherwise fp16 on CUDA (when USE_FP16), bf16 on CPUs that do
bf16 matrix work in hardware (AMX or AVX512-BF16: a 2-3× speed-up, see docs/benchmarks.md),
fp32 everywhere else (MPS included: fp16 there has produced NaNs in XLM-R attention). Decoder
LLMs (Qwen3, Gemma) were trained in bf16 and overflow in fp16, so on a GPU that has bf16 they
get bf16 instead of fp16 (``for_family``).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from .config import ConfigError
from .families import FAMILIES, Family

__all__ = [
    "Placement", "cpu_has_fast_bf16", "for_family", "resolve_device", "resolve_dtype", "resolve_placement",
    "sdpa_backends",
]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True, slots=True)
class Placement:
    device: str
    dtype: torch.dtype

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def cpu_has_fast_bf16() -> bool:
    """True where bf16 matmuls run on dedicated hardware (Intel AMX, AVX512-BF16)."""
    cpu = getattr(torch, "cpu", None)
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in probes)


def resolve_device(requested: str = "auto") -> str:
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mps_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build of torch is installed" if torch.version.cuda is None else "torch sees no GPU"
        raise ConfigError(f"RERANKER_DEVICE=cuda, but CUDA is not available on this machine ({build})")
    if requested == "mps" and not _mps_available():
        raise ConfigError("RERANKER_DEVICE=mps, but Apple MPS is not available on this machine")
    return requested


def resolve_dtype(requested: str, *, device: str, use_fp16: bool) -> torch.dtype:
    if requested != "auto":
        return _DTYPES[requested]
    if device.startswith("cuda"):
        return torch.float16 if use_fp16 else torch.float32
    if device == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def resolve_placement(*, device: str, dtype: str, use_fp16: bool) -> Placement:
    resolved = resolve_device(device)
    return Placement(resolved, resolve_dtype(dtype, device=resolved, use_fp16=use_fp16))


def for_family(placement: Placement, family: str | Family, *, dtype_setting: str) -> Placement:
    """The automatic fp16 of CUDA, turned into bf16 for decoder LLMs where the GPU supports it."""
    decoder = (FAMILIES[family] if isinstance(family, str) else family).decoder
    if (dtype_setting == "auto" and decoder and placement.dtype == torch.float16 and placement.device.startswith("cuda")
            and torch.cuda.is_bf16_supported()):
        return Placement(placement.device, torch.bfloat16)
    return placement


def configure_cpu_threads(num_threads: int) -> int:
    """One intra-op thread per usable core (0 = auto); inter-op parallelism buys nothing here.

    The scheduler runs one forward pass at a time, so torch's own pool should own the cores.
    """
    if num_threads <= 0:
        try:
            num_threads = len(os.sched_getaffinity(0))
        except AttributeError:  # macOS
            num_threads = os.cpu_count() or 1
    torch.set_num_threads(num_threads)
    return num_threads


def sdpa_backends(device: str) -> AbstractContextManager[None]:
    """SDPA without cuDNN attention on CUDA (a no-op elsewhere).

    On Hopper, SDPA prefers cuDNN attention, which builds a plan for every new (batch, length)
    shape: measured on an H100, a pass over unseen shapes ran at 305 pairs/s and the same
    shapes again at 1,639; the memory-efficient kernel ran 1,686 on first sight. A server sees
    new shapes all day, so padded batches use flash / memory-efficient attention.
    """
    if not device.startswith("cuda"):
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
