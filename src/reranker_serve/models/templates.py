"""Turning (query, document) texts into token pairs that fit the model's window.

Every family lays a pair out as   prefix · query · middle · document · suffix   and one function,
``fit()``, decides for all of them how a pair fits ``max_length``: whole, truncated (the query is
kept; the document yields first), split into overlapping windows, or refused (``truncate=False``).

Two templates produce those layouts:

    PairTemplate     the tokenizer's own pair template (``<s> A </s></s> B </s>``), read from its
                     post-processor: encoder cross-encoders. The query is tokenized once per request.
    PromptTemplate   a prompt written as text segments with {instruction}, {query} and {doc}, each
                     segment tokenized on its own, exactly as the model card does it (Qwen3-Reranker,
                     FlagEmbedding's LLM rerankers); the tokens of the query and of the document are
                     found by their character offsets, so the ids are the model card's ids.
"""

from __future__ import annotations

import string
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any, Sequence

from tokenizers import Tokenizer

from ..errors import ErrorKind, RerankError
from .base import EncodeOptions, Pair, windows

__all__ = [
    "Layout", "PairTemplate", "PromptTemplate", "encode_pairs", "fit", "flag_llm_template", "mxbai_v2_template",
    "qwen3_template",
    "rust_tokenizer",
]

# Tokens past the window are thrown away anyway: don't spend CPU tokenizing megabytes of them.
# No token of these vocabularies comes near _CHARS_PER_TOKEN characters on average.
_CHARS_PER_TOKEN = 32


@dataclass(frozen=True, slots=True)
class Layout:
    """One (query, document) pair before it is fitted to the window."""

    prefix: list[int]
    query: list[int]
    middle: list[int]
    doc: list[int]
    suffix: list[int]
    doc_head: int = 0  # tokens at the end of `middle` that belong to the document's own segment
    doc_tail: int = 0  # tokens at the start of `suffix` that belong to it

    @property
    def fixed(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)


def rust_tokenizer(hf_tokenizer: Any) -> Tokenizer:
    """A private copy of a transformers fast tokenizer's Rust tokenizer, truncation and padding off.

    We truncate and pad ourselves; and a tokenizer shared with other code whose settings change
    under concurrent use raises "Already borrowed".
    """
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError("the model has no fast (Rust) tokenizer; add its tokenizer.json")
    tokenizer = Tokenizer.from_str(backend.to_str())
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _cut(ids: list[int], keep: int, direction: str) -> list[int]:
    if len(ids) <= keep:
        return ids
    return ids[:keep] if direction == "right" else ids[len(ids) - keep :]


def _cut_text(text: str, keep: int, direction: str) -> str:
    if len(text) <= keep:
        return text
    return text[:keep] if direction == "right" else text[len(text) - keep :]


def fit(query: list[int], doc: list[int], fixed: int, options: EncodeOptions) -> list[tuple[list[int], list[int]]]:
    """The (query tokens, document tokens) of each window a pair is scored in.

    One window when it fits. Otherwise the query keeps everything it can: the document yields
    first, down to half the room; only a query longer than half the room is cut too. With
    ``max_chunks > 1`` the document is split into overlapping windows of that room instead.
    """
    direction = options.truncation_direction
    if options.max_doc_tokens is not None:
        doc = _cut(doc, options.max_doc_tokens, direction)
    room = options.max_length - fixed
    if len(query) + len(doc) <= room:
        return [(query, doc)]
    if not options.truncate:
        raise RerankError(
            ErrorKind.PAYLOAD_TOO_LARGE,
            f"Input validation error: `inputs` must have less than {options.max_length} tokens. "
            f"Given: {len(query) + len(doc) + fixed}",
        )
    if room < 2:
        raise RerankError(
            ErrorKind.VALIDATION,
            f"the model's prompt takes {fixed} of the {options.max_length} tokens a pair may have, leaving no room "
            "for the query and the document: shorten the instruction or raise RERANKER_MAX_LENGTH",
        )
    doc_keep = min(len(doc), max(room - len(query), room // 2))
    query = _cut(query, room - doc_keep, direction)
    if options.max_chunks > 1:
        return [(query, part) for part in windows(doc, doc_keep, max_chunks=options.max_chunks,
                                                    overlap=options.chunk_overlap)]
    return [(query, _cut(doc, doc_keep, direction))]


def encode_pairs(template: PairTemplate | PromptTemplate, query: str, documents: Sequence[str],
                 options: EncodeOptions) -> list[Pair]:
    """At least one pair per document (more when it is chunked), each naming its document."""
    chars = options.max_length * _CHARS_PER_TOKEN
    query = _cut_text(query, chars, "right")
    # A chunked document is scored over up to max_chunks windows: keep text for all of them.
    doc_chars = chars * max(1, options.max_chunks)
    texts = [_cut_text(d, doc_chars, options.truncation_direction) for d in documents]
    pairs = []
    for index, layout in enumerate(template.layouts(query, texts, options.instruction)):
        for q, d in fit(layout.query, layout.doc, layout.fixed, options):
            pairs.append(template.build(layout, q, d, doc=index))
    return pairs


class PairTemplate:
    """Where a pair's special tokens go, read once from the tokenizer's own post-processor.

    Building pairs from this template (plain list concatenation) lets the query be tokenized
    once per request instead of once per document, and lets ``fit`` truncate each side.
    """

    def __init__(self, tokenizer: Tokenizer, *, with_types: bool) -> None:
        self.tokenizer = tokenizer
        self.with_types = with_types
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

    def layouts(self, query: str, documents: Sequence[str], instruction: str | None) -> list[Layout]:
        q = self.tokenizer.encode(query, add_special_tokens=False).ids
        docs = self.tokenizer.encode_batch(list(documents), add_special_tokens=False)
        return [Layout(self.prefix, q, self.middle, d.ids, self.suffix) for d in docs]

    def build(self, layout: Layout, q: list[int], d: list[int], *, doc: int) -> Pair:
        ids = self.prefix + q + self.middle + d + self.suffix
        if not self.with_types:
            return Pair(ids, doc=doc)
        types = (
            self.prefix_types + [self.type_a] * len(q) + self.middle_types + [self.type_b] * len(d) + self.suffix_types
        )
        return Pair(ids, types, doc=doc)


Segment = str | tuple[int, ...]  # text with {instruction}/{query}/{doc}, or fixed token ids


def _render(template: str, values: dict[str, str]) -> tuple[str, dict[str, tuple[int, int]]]:
    """Fill the {name} fields of ``template``; return the text and the character span of each value."""
    parts: list[str] = []
    spans: dict[str, tuple[int, int]] = {}
    at = 0
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(literal)
        at += len(literal)
        if field is not None:
            value = values[field]
            spans[field] = (at, at + len(value))
            parts.append(value)
            at += len(value)
    return "".join(parts), spans


def _fields(segment: Segment) -> set[str]:
    if isinstance(segment, tuple):
        return set()
    return {field for _, field, _, _ in string.Formatter().parse(segment) if field is not None}


def _token_span(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """Indices [i, j) of the tokens that overlap characters [start, end)."""
    i = bisect_right(offsets, start, key=lambda o: o[1])  # the first token that ends after `start`
    j = bisect_left(offsets, end, key=lambda o: o[0])  # the first token that starts at or after `end`
    return i, max(i, j)


class PromptTemplate:
    """A prompt in segments, each tokenized on its own and concatenated (as model cards do).

    Exactly one segment holds ``{doc}``; ``{query}`` sits in it or in an earlier segment;
    ``{instruction}`` anywhere. Segments after the document's hold no query or document.
    """

    def __init__(self, tokenizer: Tokenizer, segments: Sequence[Segment], *, default_instruction: str,
                 instruction_format: str = "{}") -> None:
        self.tokenizer = tokenizer
        self.default_instruction = default_instruction
        # How an instruction is written into its field; an empty instruction leaves the field empty
        # (mxbai-rerank-v2 writes "instruction: ...\n" only when there is one).
        self.instruction_format = instruction_format
        at_doc = [i for i, s in enumerate(segments) if "doc" in _fields(s)]
        at_query = [i for i, s in enumerate(segments) if "query" in _fields(s)]
        if len(at_doc) != 1 or len(at_query) != 1 or at_query[0] > at_doc[0]:
            raise ValueError("a prompt needs one {doc} segment and one {query} in it or before it")
        doc_segment = segments[at_doc[0]]
        assert isinstance(doc_segment, str)  # fixed ids hold no placeholder
        self.before, self.doc_segment, self.after = segments[: at_doc[0]], doc_segment, segments[at_doc[0] + 1 :]
        if "query" in _fields(doc_segment):
            _, spans = _render(doc_segment, {"instruction": "i", "query": "q", "doc": "d"})
            if spans["query"] > spans["doc"]:
                raise ValueError("the query must come before the document")

    def _encode(self, segment: Segment, values: dict[str, str]) -> tuple[list[int], dict[str, tuple[int, int]]]:
        """A segment's ids and the token span of each value in it."""
        if isinstance(segment, tuple):
            return list(segment), {}
        text, spans = _render(segment, values)
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        return encoding.ids, {name: _token_span(encoding.offsets, *span) for name, span in spans.items()}

    def layouts(self, query: str, documents: Sequence[str], instruction: str | None) -> list[Layout]:
        instruction = self.default_instruction if instruction is None else instruction
        values = {"instruction": self.instruction_format.format(instruction) if instruction else "", "query": query}
        head: list[int] = []
        query_at: tuple[int, int] | None = None
        for segment in self.before:
            ids, spans = self._encode(segment, values)
            if "query" in spans:
                query_at = (len(head) + spans["query"][0], len(head) + spans["query"][1])
            head += ids
        tail = [i for segment in self.after for i in self._encode(segment, values)[0]]
        rendered = [_render(self.doc_segment, {**values, "doc": doc}) for doc in documents]
        encodings = self.tokenizer.encode_batch([text for text, _ in rendered], add_special_tokens=False)
        base, out = len(head), []
        for encoding, (_, spans) in zip(encodings, rendered):
            d0, d1 = _token_span(encoding.offsets, *spans["doc"])
            if query_at is None:
                q0, q1 = _token_span(encoding.offsets, *spans["query"])
                q0, q1 = base + q0, base + q1
            else:
                q0, q1 = query_at
            ids = head + encoding.ids + tail
            start, end = base + d0, base + d1
            out.append(Layout(ids[:q0], ids[q0:q1], ids[q1:start], ids[start:end], ids[end:],
                              doc_head=d0, doc_tail=len(encoding.ids) - d1))
        return out

    def build(self, layout: Layout, q: list[int], d: list[int], *, doc: int) -> Pair:
        ids = layout.prefix + q + layout.middle + d + layout.suffix
        before = len(layout.prefix) + len(q) + len(layout.middle) - layout.doc_head
        return Pair(ids, doc=doc, before_doc=before, after_doc=len(layout.suffix) - layout.doc_tail)


# -- the prompts of the model cards -----------------------------------------------------------------
# Qwen3-Reranker (0.6B/4B/8B, and the converted -seq-cls checkpoints): system prompt, the
# instruction, query and document as the user turn, and an empty think block to answer after.
QWEN3_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
_QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
_QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"

# FlagEmbedding's LLM rerankers: "A: query", "B: passage", then the prompt, asking for Yes/No.
FLAG_LLM_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'."
)
FLAG_LIGHTWEIGHT_PROMPT = "Predict whether passage B contains an answer to query A."


# mixedbread's mxbai-rerank-v2 (mxbai_rerank_v2.py of the mxbai-rerank package): Qwen's default
# system turn, the (instruction and) query, the document and a task prompt asking for 0 or 1; each
# piece tokenized on its own, joined by "\n" pieces.
_MXBAI_PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
)
_MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
_MXBAI_TASK = (
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your binary "
    "relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)


def mxbai_v2_template(tokenizer: Tokenizer, *, instruction: str | None = None) -> PromptTemplate:
    """``prefix · [instruction: I\n]query: Q · \n · document: D · \n · task · suffix``; no instruction
    by default (mixedbread's ``instruction=None``)."""
    return PromptTemplate(tokenizer, [_MXBAI_PREFIX, "{instruction}query: {query}", "\n", "document: {doc}", "\n",
                                      _MXBAI_TASK, _MXBAI_SUFFIX],
                          default_instruction=instruction or "", instruction_format="instruction: {}\n")


def qwen3_template(tokenizer: Tokenizer, *, instruction: str | None = None) -> PromptTemplate:
    body = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
    return PromptTemplate(tokenizer, [_QWEN3_PREFIX, body, _QWEN3_SUFFIX],
                          default_instruction=instruction or QWEN3_INSTRUCTION)


def flag_llm_template(tokenizer: Tokenizer, *, bos: int | None, prompt: str) -> PromptTemplate:
    """``[bos] "A: {query}" "\\n" "B: {doc}" "\\n" "{prompt}"``, each piece tokenized alone (no bos
    when the tokenizer has none, or when it doubles as the padding token, as FlagEmbedding does)."""
    head: list[Segment] = [(bos,)] if bos is not None else []
    return PromptTemplate(tokenizer, [*head, "A: {query}", "\n", "B: {doc}", "\n", "{instruction}"],
                          default_instruction=prompt)
