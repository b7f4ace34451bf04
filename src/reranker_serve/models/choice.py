"""Which attention path serves a model (RERANKER_ATTENTION), and the start-up proof that it may.

A kernel path that could not be run on real hardware during development must never be what
breaks a deployment: an unpadded path serves only after it scored a warm-up batch like the
padded path does, within the dtype's tolerance. If it raises or disagrees, the model serves
padded and the log says why (with RERANKER_ATTENTION=unpadded, the start fails instead).
"""

from __future__ import annotations

from typing import Callable

import torch
from loguru import logger

from ..errors import ModelLoadError
from .attention import Kernel, reference_kernel, torch_varlen_kernel

__all__ = ["CHECK_DOCUMENTS", "SELF_CHECK_TOLERANCE", "compare", "plan_attention", "report_unpadded_check"]

# How far the unpadded results may stray from the padded ones (atol = rtol): the two paths sum
# in different orders, which in half precision moves a logit by a few ulps per layer.
SELF_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 8e-2}

_WORDS = "the engine checks its fast path against the padded one before it serves".split()
# Documents from a few words to several hundred tokens: one batch with very different lengths.
CHECK_DOCUMENTS = [" ".join(_WORDS * n)[: 40 * n] for n in (1, 3, 9, 27, 81)]


def plan_attention(setting: str, *, device: str, dtype: torch.dtype, supported: str | None,
                   varlen_available: bool) -> tuple[Kernel | None, str]:
    """The unpadded kernel to try (None: serve padded), and why.

    auto: unpadded on CUDA in fp16/bf16 where torch has variable-length kernels (the start-up
    self-check then has the last word); padded everywhere else: on the CPU the padded path with
    length-sorted batches is what measures best. unpadded: required, on the reference kernel
    where there is no varlen kernel. ``supported``: why the model has no unpadded path, if not.
    """
    if setting == "padded":
        return None, "RERANKER_ATTENTION=padded"
    fast = device.startswith("cuda") and varlen_available and dtype in (torch.float16, torch.bfloat16)
    if setting == "unpadded":
        if supported is not None:
            raise ModelLoadError(f"RERANKER_ATTENTION=unpadded: {supported}")
        return (torch_varlen_kernel if fast else reference_kernel), "RERANKER_ATTENTION=unpadded"
    if not device.startswith("cuda"):
        return None, f"padded on {device} (unpadded needs CUDA varlen kernels)"
    if supported is not None:
        return None, f"padded: {supported}"
    if not varlen_available:
        return None, "padded: this torch has no torch.nn.attention.varlen (PyTorch >= 2.10)"
    if not fast:
        return None, f"padded: the varlen (flash) kernels need fp16 or bf16, not {str(dtype).removeprefix('torch.')}"
    return torch_varlen_kernel, "auto on CUDA"


def compare(expected: Callable[[], torch.Tensor], candidate: Callable[[], torch.Tensor], *, dtype: torch.dtype,
            device: str, against: str = "the padded path") -> str | None:
    """Run both; None if the candidate agrees with the expected result within the dtype's tolerance."""
    try:
        with torch.inference_mode():
            want = expected().float()
            got = candidate().float()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
    except Exception as exc:  # a kernel that cannot run here (dtype, head size, GPU generation)
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}"
    tolerance = SELF_CHECK_TOLERANCE.get(dtype, 1e-1)
    if got.shape == want.shape and not torch.isfinite(got).all() and torch.isfinite(want).all():
        return f"it produced non-finite scores where {against} did not"
    if got.shape != want.shape or not torch.allclose(got, want, atol=tolerance, rtol=tolerance):
        drift = (got - want).abs().max().item() if got.shape == want.shape else float("nan")
        return f"its results differ from {against} by up to {drift:.3g} (tolerance {tolerance:g})"
    logger.debug("start-up check against {}: max |Δ| {:.3g}", against, (got - want).abs().max().item())
    return None


def report_unpadded_check(name: str, kernel: Kernel, failure: str | None, *, required: bool) -> str:
    """Log the outcome of the self-check and return the note /info and the log give; raise if required."""
    if failure is None:
        logger.info("{}: unpadded attention ({} kernel); start-up self-check passed", name, kernel.name)
        return f"unpadded ({kernel.name} kernel), start-up self-check passed"
    if required:
        raise ModelLoadError(f"RERANKER_ATTENTION=unpadded: the start-up self-check failed: {failure}")
    logger.warning("{}: unpadded attention failed its start-up self-check ({}); serving padded", name, failure)
    return f"padded: the unpadded self-check failed ({failure})"
