"""Variable-length attention over packed sequences, plugged into transformers' attention registry.

transformers' models look their attention function up by ``config._attn_implementation`` in
``AttentionInterface`` and pass their extra keyword arguments through to it. We register one
function, ``reranker_unpadded``, that reads the packing from those arguments (``cu_seq_lens_q``
/ ``_k``, ``max_length_q`` / ``_k``, the names transformers' own flash-attention path uses) and
runs a ``Kernel`` on the packed heads. The model's own modules compute everything else.

Kernels (q, k, v: (tokens, heads, head_dim); one segment per pair):

    torch_varlen   ``torch.nn.attention.varlen.varlen_attn`` (PyTorch >= 2.10): flash kernels,
                   CUDA only, fp16/bf16 only
    reference      scaled_dot_product_attention segment by segment: any device and dtype. It is
                   what tests compare against and what RERANKER_ATTENTION=unpadded runs where
                   there is no varlen kernel (correct, not fast).

Causal attention with fewer queries than keys (a document suffix after a shared prefix) is
aligned bottom-right, as flash attention does: query i of a segment of q queries and k keys
sees keys 0 .. k - q + i.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Protocol

import torch
import torch.nn.functional as F

__all__ = ["Kernel", "UNPADDED", "reference_kernel", "torch_varlen_kernel"]


class Kernel(Protocol):
    name: str

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
                 max_q: int, max_k: int, *, scale: float | None, causal: bool) -> torch.Tensor: ...


def _named(name: str) -> Callable[[Callable[..., torch.Tensor]], Kernel]:
    def mark(fn: Callable[..., torch.Tensor]) -> Kernel:
        fn.name = name  # type: ignore[attr-defined]
        return fn  # type: ignore[return-value]

    return mark


@_named("reference")
def reference_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
                     max_q: int, max_k: int, *, scale: float | None, causal: bool) -> torch.Tensor:
    groups = q.shape[1] // k.shape[1]  # grouped-query attention: each kv head serves `groups` query heads
    out = torch.empty_like(q)
    bounds_q, bounds_k = cu_q.tolist(), cu_k.tolist()
    for (q0, q1), (k0, k1) in zip(zip(bounds_q, bounds_q[1:]), zip(bounds_k, bounds_k[1:])):
        qs, ks, vs = q[q0:q1].transpose(0, 1), k[k0:k1].transpose(0, 1), v[k0:k1].transpose(0, 1)
        if groups > 1:
            ks, vs = ks.repeat_interleave(groups, 0), vs.repeat_interleave(groups, 0)
        mask = None
        if causal:
            n_q, n_k = q1 - q0, k1 - k0
            mask = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril(diagonal=n_k - n_q)
        out[q0:q1] = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale).transpose(0, 1)
    return out


def _torch_varlen() -> Callable[..., torch.Tensor] | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn  # type: ignore[no-any-return]


def torch_varlen_available() -> bool:
    return _torch_varlen() is not None


@_named("torch_varlen")
def torch_varlen_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
                        max_q: int, max_k: int, *, scale: float | None, causal: bool) -> torch.Tensor:
    varlen_attn = _torch_varlen()
    if varlen_attn is None:
        raise RuntimeError("this torch has no torch.nn.attention.varlen (PyTorch >= 2.10)")
    params = inspect.signature(varlen_attn).parameters
    extra: dict[str, Any] = {}
    if causal:
        # PyTorch 2.10/2.11 take is_causal; later ones a (left, right) window, (-1, 0) being causal.
        extra = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            extra["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, **extra)  # type: ignore[no-any-return]


def _attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
               **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function interface: (batch 1, heads, tokens, dim) in, (1, tokens, heads, dim) out."""
    kernel: Kernel = kwargs["varlen_kernel"]
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    key_index = kwargs.get("varlen_key_index")
    if key_index is not None:  # each pair's keys are gathered (a shared prefix's cache, then its own)
        k, v = k.index_select(0, key_index), v.index_select(0, key_index)
    out = kernel(q, k, v, kwargs["cu_seq_lens_q"], kwargs["cu_seq_lens_k"], kwargs["max_length_q"],
                 kwargs["max_length_k"], scale=scaling, causal=bool(getattr(module, "is_causal", False)))
    return out[None], None


class _Registered:
    """The registry entry, and a context that points a model's config at it for one call."""

    name = "reranker_unpadded"

    def __init__(self) -> None:
        self._done = False

    def register(self) -> None:
        if self._done:
            return
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

        AttentionInterface.register(self.name, _attention)
        # No mask is built: the packing is the mask (flash attention's mask function returns None).
        ALL_MASK_ATTENTION_FUNCTIONS.register(self.name, flash_attention_mask)
        self._done = True

    @contextmanager
    def on(self, config: Any) -> Iterator[None]:
        # Per call, not for good: the same model also runs padded (the start-up self-check, and
        # the fallback). The batcher runs one forward pass at a time, so nothing races on it.
        self.register()
        previous = config._attn_implementation
        config._attn_implementation = self.name
        try:
            yield
        finally:
            config._attn_implementation = previous


UNPADDED = _Registered()
