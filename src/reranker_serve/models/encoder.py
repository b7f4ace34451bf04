"""Encoder cross-encoders: bge-reranker-v2-m3 / -large / -base and any one-label
``*ForSequenceClassification`` model (two-label models score as P(label 1)).

Loading goes through sentence-transformers' ``CrossEncoder`` (hub download, cache, offline,
dtype, attention implementation). Scoring does not go through ``CrossEncoder.predict``: the
engine needs the pairs tokenized once, counted, truncated its way and batched across requests,
so this module tokenizes with the model's own Rust tokenizer and calls the transformers model
directly for raw logits. The activation (sigmoid, as FlagEmbedding's
``compute_score(normalize=True)``) is applied in ``activate`` and nowhere else.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from tokenizers import Encoding, Tokenizer

from .base import EncodeOptions, Pair, sigmoid, windows
from ..errors import ErrorKind, RerankError

__all__ = ["EncoderReranker"]

# Position tables of RoBERTa-style models start after the padding index.
_POSITION_OFFSET_MODELS = {"roberta", "xlm-roberta", "camembert", "xlm-roberta-xl", "longformer"}


class _PairTemplate:
    """Where a pair's special tokens go, read once from the tokenizer's own post-processor.

    Building pairs from this template (plain list concatenation) lets the query be tokenized
    once per request instead of once per document, and lets us truncate each side ourselves.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        first = tokenizer.encode("query", add_special_tokens=False)
        second = tokenizer.encode("document", add_special_tokens=False)
        both = tokenizer.post_process(first, second, add_special_tokens=True)
        # The non-special positions are A's tokens, then B's (sequence_ids is unreliable on
        # some TemplateProcessing configs, the special-tokens mask is not).
        plain = [i for i, special in enumerate(both.special_tokens_mask) if not special]
        a, b = plain[: len(first.ids)], plain[len(first.ids) :]
        contiguous = all(y == x + 1 for x, y in zip(a, a[1:])) and all(y == x + 1 for x, y in zip(b, b[1:]))
        if len(b) != len(second.ids) or not contiguous or not a or not b:
            raise ValueError("the tokenizer's pair template is not <prefix> A <middle> B <suffix>")
        ids, types = both.ids, both.type_ids
        self.prefix, self.middle, self.suffix = ids[: a[0]], ids[a[-1] + 1 : b[0]], ids[b[-1] + 1 :]
        self.prefix_types = types[: a[0]]
        self.middle_types = types[a[-1] + 1 : b[0]]
        self.suffix_types = types[b[-1] + 1 :]
        self.type_a, self.type_b = types[a[0]], types[b[0]]
        self.specials = len(self.prefix) + len(self.middle) + len(self.suffix)

    def build(self, q: list[int], d: list[int], *, with_types: bool, doc: int = 0) -> Pair:
        ids = self.prefix + q + self.middle + d + self.suffix
        if not with_types:
            return Pair(ids, doc=doc)
        types = (
            self.prefix_types + [self.type_a] * len(q) + self.middle_types + [self.type_b] * len(d) + self.suffix_types
        )
        return Pair(ids, types, doc=doc)


_CHARS_PER_TOKEN = 32


def _cut_text(text: str, keep: int, direction: str) -> str:
    if len(text) <= keep:
        return text
    return text[:keep] if direction == "right" else text[len(text) - keep :]


def _cut(ids: list[int], keep: int, direction: str) -> list[int]:
    if len(ids) <= keep:
        return ids
    return ids[:keep] if direction == "right" else ids[len(ids) - keep :]


class EncoderReranker:
    """A loaded sequence-classification cross-encoder."""

    def __init__(self, cross_encoder: Any, *, name: str, max_length: int) -> None:
        self._ce = cross_encoder  # kept so the module tree (and its memory) has one owner
        self._model = cross_encoder.model.eval()
        self.name = name
        self.device = str(self._model.device)
        self.dtype_name = str(self._model.dtype).removeprefix("torch.")
        config = self._model.config
        self.num_labels = int(config.num_labels)
        if self.num_labels not in (1, 2):
            raise ValueError(f"{self.num_labels} labels: a reranker has one relevance logit (or two: no/yes)")

        hf_tokenizer = cross_encoder.tokenizer
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError("the model has no fast (Rust) tokenizer; add its tokenizer.json")
        # A private copy with truncation and padding off: we do both ourselves, and a shared
        # tokenizer whose settings change under concurrent use raises "Already borrowed".
        self._tokenizer = Tokenizer.from_str(backend.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._template = _PairTemplate(self._tokenizer)
        self._with_types = "token_type_ids" in getattr(hf_tokenizer, "model_input_names", ())
        pad_id = hf_tokenizer.pad_token_id
        self._pad_id = int(pad_id if pad_id is not None else (config.pad_token_id or 0))

        limit = int(getattr(config, "max_position_embeddings", max_length) or max_length)
        if config.model_type in _POSITION_OFFSET_MODELS:
            limit -= int(config.pad_token_id or 0) + 1
        tok_limit = getattr(hf_tokenizer, "model_max_length", None)
        if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
            limit = min(limit, tok_limit)
        self.max_length = min(max_length, limit)

    # -- tokenization --------------------------------------------------------------------
    def encode(self, query: str, documents: Sequence[str], options: EncodeOptions) -> list[Pair]:
        tokenizer, template = self._tokenizer, self._template
        max_length = min(options.max_length, self.max_length)
        budget = max_length - template.specials
        direction = options.truncation_direction
        # Tokens past the window are thrown away anyway: don't spend CPU tokenizing megabytes of
        # them. No token of these vocabularies comes near _CHARS_PER_TOKEN characters on average.
        chars = max_length * _CHARS_PER_TOKEN
        q = tokenizer.encode(_cut_text(query, chars, "right"), add_special_tokens=False).ids
        texts = [_cut_text(d, chars, direction) for d in documents]
        docs: list[Encoding] = tokenizer.encode_batch(texts, add_special_tokens=False)
        pairs = []
        for index, doc in enumerate(docs):
            d = doc.ids
            if options.max_doc_tokens is not None:
                d = _cut(d, options.max_doc_tokens, direction)
            if len(q) + len(d) <= budget:
                pairs.append(template.build(q, d, with_types=self._with_types, doc=index))
                continue
            if not options.truncate:
                raise RerankError(
                    ErrorKind.PAYLOAD_TOO_LARGE,
                    f"Input validation error: `inputs` must have less than {max_length} tokens. "
                    f"Given: {len(q) + len(d) + template.specials}",
                )
            # The query keeps everything it can: the document yields first, down to half the
            # window; only a query longer than half the window is cut too.
            d_keep = min(len(d), max(budget - len(q), budget // 2))
            q_pair = _cut(q, budget - d_keep, direction)
            if options.max_chunks > 1:
                parts = windows(d, d_keep, max_chunks=options.max_chunks, overlap=options.chunk_overlap)
            else:
                parts = [_cut(d, d_keep, direction)]
            pairs.extend(template.build(q_pair, part, with_types=self._with_types, doc=index) for part in parts)
        return pairs

    # -- inference -------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, batch: Sequence[Pair]) -> list[float]:
        width = max(len(p) for p in batch)
        pad = self._pad_id
        ids = torch.tensor([p.ids + [pad] * (width - len(p)) for p in batch], dtype=torch.long)
        mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in batch], dtype=torch.long)
        inputs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        if self._with_types:
            types = [(p.type_ids or []) + [0] * (width - len(p)) for p in batch]
            inputs["token_type_ids"] = torch.tensor(types, dtype=torch.long, device=self.device)
        logits = self._model(**inputs).logits.float()
        raw = logits[:, 0] if self.num_labels == 1 else logits[:, 1] - logits[:, 0]
        return raw.cpu().tolist()

    def activate(self, raw: float) -> float:
        # One label: sigmoid(logit). Two labels: softmax(...)[1] == sigmoid(l1 - l0).
        return sigmoid(raw)
