"""Shared prompt prefixes of decoder rerankers: computed once per request, reused for every document.

Every pair of a Qwen3-Reranker or bge-reranker-v2-gemma request starts with the same tokens
(system prompt, instruction, query: dozens to hundreds of tokens). ``mark_shared`` records, at
encode time, how many leading tokens a pair shares with the rest of its request: the longest
common prefix of the request's *token ids*, so the split is exactly where the unshared
tokenization differs, whatever the tokenizer merged across the query/document boundary.

``last_hidden`` then runs a batch in two passes (vLLM's prefix cache does the same for these
models): each distinct prefix once, keeping its keys and values (a transformers DynamicCache),
then every pair's suffix against its prefix's cache, expanded along the batch. Positions
continue from the prefix's length, the masks hide the padding of both passes, and the state
at each pair's last token is what the unshared forward would compute (fp32: within 1e-5).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Sequence

import torch

from .base import Pair, padded_layout, scatter_rows, to_device

__all__ = ["last_hidden", "mark_shared"]


def mark_shared(pairs: list[Pair]) -> list[Pair]:
    """The pairs with ``shared`` set to the tokens they all begin with (each keeps one of its own)."""
    if len(pairs) < 2:
        return pairs
    common = len(os.path.commonprefix([p.ids for p in pairs]))  # C-speed on lists, not a Python loop per token
    shared = min(common, min(len(p) for p in pairs) - 1)
    return [replace(p, shared=shared) for p in pairs] if shared > 0 else pairs


def _right_padded(rows: Sequence[Sequence[int]], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    layout = padded_layout([len(r) for r in rows], side="right")
    return to_device(scatter_rows(rows, layout, pad_id), device), to_device(layout.long(), device)


def _new_cache(config: Any) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=config)
    except TypeError:  # older transformers: no config argument
        return DynamicCache()


def last_hidden(decoder: Any, batch: Sequence[Pair], *, pad_id: int, device: str) -> torch.Tensor:
    """The decoder's final hidden state at each pair's last token, (pairs, hidden), prefixes shared.

    ``decoder`` is the transformers base model (``model.model``); pairs whose ``shared`` is 0
    form prefixes of their own first token (pairs that happen to begin alike share it).
    """
    groups: dict[tuple[int, ...], int] = {}
    group_of = []
    for p in batch:
        group_of.append(groups.setdefault(tuple(p.ids[: max(p.shared, 1)]), len(groups)))
    prefixes = list(groups)
    lengths = torch.tensor([len(prefix) for prefix in prefixes], dtype=torch.long)
    index = torch.tensor(group_of, dtype=torch.long)

    # Pass 1: each distinct prefix once (right-padded: a padding slot only ever attends to the
    # real tokens before it, and the suffixes' mask hides it).
    ids, mask = _right_padded(prefixes, pad_id, device)
    cache = _new_cache(decoder.config)
    positions = torch.arange(ids.shape[1], device=device)[None].expand(ids.shape[0], -1)
    decoder(ids, mask, positions, cache, use_cache=True)
    cache.reorder_cache(index.to(device))  # one copy of its prefix's keys and values per pair

    # Pass 2: the suffixes, right-padded, at positions that continue their prefix.
    starts = lengths[index]
    suffixes = [p.ids[int(s):] for p, s in zip(batch, starts)]
    ids, suffix_mask = _right_padded(suffixes, pad_id, device)
    full_mask = torch.cat([mask.index_select(0, index.to(device)), suffix_mask], dim=1)
    positions = starts.to(device)[:, None] + torch.arange(ids.shape[1], device=device)[None]
    hidden = decoder(ids, full_mask, positions, cache, use_cache=True).last_hidden_state
    last = torch.tensor([len(s) - 1 for s in suffixes], device=device)
    return hidden[torch.arange(len(batch), device=device), last]
