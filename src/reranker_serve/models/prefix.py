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
from itertools import chain
from typing import Any, Sequence

import torch

from .attention import UNPADDED, Kernel
from .base import Pair, padded_layout, scatter_rows, to_device

__all__ = ["last_hidden", "mark_shared", "packed_last_hidden"]


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


def _groups(batch: Sequence[Pair]) -> tuple[list[tuple[int, ...]], torch.Tensor]:
    """The distinct prefixes of a batch and each pair's prefix index.

    Pairs whose ``shared`` is 0 form prefixes of their own first token (pairs that happen to
    begin alike share it), so every pair has a prefix and a non-empty suffix.
    """
    groups: dict[tuple[int, ...], int] = {}
    group_of = [groups.setdefault(tuple(p.ids[: max(p.shared, 1)]), len(groups)) for p in batch]
    return list(groups), torch.tensor(group_of, dtype=torch.long)


def last_hidden(decoder: Any, batch: Sequence[Pair], *, pad_id: int, device: str) -> torch.Tensor:
    """The decoder's final hidden state at each pair's last token, (pairs, hidden), prefixes shared.

    ``decoder`` is the transformers base model (``model.model``); batches are right-padded.
    """
    prefixes, index = _groups(batch)
    lengths = torch.tensor([len(prefix) for prefix in prefixes], dtype=torch.long)

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


def _within(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For segments of ``lengths`` laid end to end: cu_seqlens (int32) and each token's offset in its segment."""
    cu = torch.zeros(len(lengths) + 1, dtype=torch.long)
    torch.cumsum(lengths, 0, out=cu[1:])
    offsets = torch.arange(int(cu[-1])) - torch.repeat_interleave(cu[:-1], lengths)
    return cu, offsets


def packed_last_hidden(decoder: Any, batch: Sequence[Pair], *, kernel: Kernel, device: str) -> torch.Tensor:
    """``last_hidden`` unpadded: prefixes packed into one sequence (causal varlen attention), then
    the suffixes packed, each attending to its prefix's cached keys (gathered) and its own.

    The keys a suffix sees are [its prefix | itself]; causal attention with fewer queries than
    keys aligns bottom-right (flash attention's rule), which is exactly "all of the prefix, then
    causal within the suffix". No padding anywhere: a batch costs its real tokens.
    """
    prefixes, index = _groups(batch)
    p_len = torch.tensor([len(prefix) for prefix in prefixes], dtype=torch.long)
    cu_p, p_pos = _within(p_len)
    cache = _new_cache(decoder.config)
    with UNPADDED.on(decoder.config):
        ids = torch.tensor(list(chain.from_iterable(prefixes)), dtype=torch.long)[None]
        cu = to_device(cu_p.int(), device)
        decoder(to_device(ids, device), None, to_device(p_pos[None], device), cache, use_cache=True,
                cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=int(p_len.max()), max_length_k=int(p_len.max()),
                varlen_kernel=kernel)

        pair_p = p_len[index]  # each pair's prefix length
        suffixes = [p.ids[int(n):] for p, n in zip(batch, pair_p)]
        s_len = torch.tensor([len(s) for s in suffixes], dtype=torch.long)
        cu_s, s_off = _within(s_len)
        positions = torch.repeat_interleave(pair_p, s_len) + s_off
        # Keys of pair i: its prefix's slots in the cache, then its own suffix's (appended after
        # every prefix, at cu_p[-1] + cu_s[i]).
        k_len = pair_p + s_len
        cu_k, k_off = _within(k_len)
        own_p = torch.repeat_interleave(pair_p, k_len)
        key_index = torch.where(k_off < own_p, torch.repeat_interleave(cu_p[:-1][index], k_len) + k_off,
                                int(cu_p[-1]) + torch.repeat_interleave(cu_s[:-1], k_len) + k_off - own_p)
        ids = torch.tensor(list(chain.from_iterable(suffixes)), dtype=torch.long)[None]
        hidden = decoder(to_device(ids, device), None, to_device(positions[None], device), cache, use_cache=True,
                         cu_seq_lens_q=to_device(cu_s.int(), device), cu_seq_lens_k=to_device(cu_k.int(), device),
                         max_length_q=int(s_len.max()), max_length_k=int(k_len.max()), varlen_kernel=kernel,
                         varlen_key_index=to_device(key_index, device)).last_hidden_state[0]
    return hidden.index_select(0, to_device(cu_s[1:] - 1, device))
