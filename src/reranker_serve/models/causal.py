"""Decoder LLM rerankers scored from the next-token logits at the last position of their prompt.

    qwen3   Qwen3-Reranker (0.6B/4B/8B): the chat prompt of its model card; the score is
            P("yes") of the softmax over the "yes" and "no" logits, i.e. sigmoid(l_yes - l_no),
            and the raw score is that log-odds.
    llm     FlagEmbedding's FlagLLMReranker (bge-reranker-v2-gemma): "A: query", "B: passage" and
            a prompt; the raw score is the logit of "Yes", the score its sigmoid
            (``compute_score(normalize=True)``).
    mxbai-rerank-v2
            mixedbread's mxbai-rerank-base/large-v2 (Qwen2): mixedbread's chat prompt ending in
            "Relevance:"; the raw score is logit("1") - logit("0") (``MxbaiRerankV2.forward``),
            the score its sigmoid.

Pairs are padded on the left (the last position is each pair's own last token) with position
ids that start at each pair's first token, and only the last position's logits are computed
(``logits_to_keep=1``): the language-model head over the whole vocabulary is the costliest
layer of a small LLM, and only one of its rows per pair is needed.

Every pair of a request begins with the same system prompt, instruction and query: with
RERANKER_SHARE_PREFIX (default on) that prefix is computed once per batch and its keys and
values reused for each document's suffix (prefix.py). On CUDA (RERANKER_ATTENTION=auto) both
passes run unpadded, prefixes and suffixes packed, with causal variable-length attention, once
a start-up self-check agrees with the padded path (choice.py).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import torch

from ..config import ModelSpec
from ..device import Placement, sdpa_backends
from ..families import Family
from .base import EncodeOptions, Pair, Pending, pad, sigmoid
from .hf import pad_id_of, window_limit
from .architectures import attn_implementation
from .attention import Kernel, torch_varlen_available
from .choice import CHECK_DOCUMENTS, compare, plan_attention, report_unpadded_check
from .prefix import last_hidden, mark_shared, packed_last_hidden
from .templates import (
    FLAG_LLM_PROMPT, PromptTemplate, encode_pairs, flag_llm_template, mxbai_v2_template, qwen3_template, rust_tokenizer,
)

__all__ = [
    "CausalLMReranker", "CausalPrompt", "PromptedLM", "flag_llm_prompt", "load_causal_lm", "load_hf", "mxbai_v2_prompt",
    "qwen3_prompt",
]


def _token_id(hf_tokenizer: Any, token: str, *, how: str) -> int:
    if how == "token":  # the vocabulary entry itself (Qwen3's card: convert_tokens_to_ids)
        found = hf_tokenizer.convert_tokens_to_ids(token)
        if found is None or found == hf_tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no token {token!r}, which this reranker is scored by")
        return int(found)
    ids = hf_tokenizer(token, add_special_tokens=False)["input_ids"]  # FlagEmbedding: first id of the text
    if not ids:
        raise ValueError(f"the tokenizer turns {token!r} into no tokens")
    return int(ids[0])


class PromptedLM:
    """What every decoder reranker shares: a torch model fed a prompt template, scored by a sigmoid."""

    backend = "torch"
    backend_note = ""
    takes_instruction = True
    # ScoringModel's defaults for a decoder: padded, synchronous on the CPU, no launch (the
    # layer-wise rerankers have only ``forward``); CausalLMReranker overrides them.
    attention = "padded"
    attention_note = ""
    padded = True
    asynchronous = False
    launch: Callable[[Sequence[Pair]], Pending] | None = None
    quantization = None  # int8 is for cross-encoders (models/quantize.py)

    def __init__(self, model: Any, hf_tokenizer: Any, *, name: str, family: str, max_length: int,
                 template: PromptTemplate) -> None:
        self._model = model.eval()
        self.name = name
        self.family = family
        self.device = str(self._model.device)
        self.dtype_name = str(self._model.dtype).removeprefix("torch.")
        self.template = template
        self._pad_id = pad_id_of(hf_tokenizer, model.config)
        self.max_length = window_limit(model.config, hf_tokenizer, max_length)

    def encode(self, query: str, documents: Sequence[str], options: EncodeOptions) -> list[Pair]:
        return encode_pairs(self.template, query, documents, options)

    def activate(self, raw: float) -> float:
        return sigmoid(raw)


class CausalLMReranker(PromptedLM):
    """A causal LM scored by one token's logit (or the difference of two) after its prompt."""

    def __init__(self, model: Any, hf_tokenizer: Any, *, true_id: int, false_id: int | None, share_prefix: bool,
                 **common: Any) -> None:
        super().__init__(model, hf_tokenizer, **common)
        self._true, self._false = true_id, false_id
        self._last_only = "logits_to_keep" in inspect.signature(self._model.forward).parameters
        # The shared prefix needs the base model and the head apart, and no logit softcapping.
        decoder = getattr(self._model, "model", None)
        separable = (decoder is not None and self._model.get_output_embeddings() is not None
                     and getattr(model.config, "final_logit_softcapping", None) is None)
        self.share_prefix = bool(share_prefix and separable)
        self._decoder = decoder
        # Unpadded (packed, causal varlen) when a kernel is set: see choose_causal_attention.
        self.kernel: Kernel | None = None
        self.unpadded_support = None if separable else f"no unpadded path for {type(model).__name__}"

    @property
    def attention(self) -> str:
        return "padded" if self.kernel is None else "unpadded"

    @property
    def padded(self) -> bool:
        return self.kernel is None

    def encode(self, query: str, documents: Sequence[str], options: EncodeOptions) -> list[Pair]:
        pairs = super().encode(query, documents, options)
        return mark_shared(pairs) if self.share_prefix else pairs

    @torch.inference_mode()
    def launch(self, batch: Sequence[Pair]) -> Pending:  # type: ignore[override]  # PromptedLM: None
        with sdpa_backends(self.device):
            if self.kernel is not None and min(len(p) for p in batch) > 1:
                hidden = packed_last_hidden(self._decoder, batch, kernel=self.kernel, device=self.device)
                logits = self._model.get_output_embeddings()(hidden).float()
            elif self.share_prefix and any(p.shared for p in batch) and min(len(p) for p in batch) > 1:
                hidden = last_hidden(self._decoder, batch, pad_id=self._pad_id, device=self.device)
                logits = self._model.get_output_embeddings()(hidden).float()
            else:
                inputs = pad(batch, self._pad_id, side="left", device=self.device)
                extra = {"logits_to_keep": 1} if self._last_only else {}
                logits = self._model(**inputs, use_cache=False, **extra).logits[:, -1, :].float()
        raw = logits[:, self._true]
        if self._false is not None:
            raw = raw - logits[:, self._false]
        return Pending(raw)

    def forward(self, batch: Sequence[Pair]) -> list[float]:
        return self.launch(batch).result()


def choose_causal_attention(reranker: CausalLMReranker, *, setting: str) -> None:
    """RERANKER_ATTENTION for a decoder reranker: packed causal varlen where the plan allows and
    a warm-up batch (two requests, shared prefixes) scores as the padded path does."""
    model = reranker._model
    kernel, why = plan_attention(setting, device=reranker.device, dtype=model.dtype,
                                 supported=reranker.unpadded_support, varlen_available=torch_varlen_available())
    if kernel is None:
        reranker.attention_note = why
        return
    options = EncodeOptions(max_length=reranker.max_length)
    pairs = (reranker.encode("which path scores pairs exactly", CHECK_DOCUMENTS, options)
             + reranker.encode("and in order", CHECK_DOCUMENTS[:2], options))

    def scores(candidate: Kernel | None) -> torch.Tensor:
        reranker.kernel = candidate
        try:
            return torch.tensor(reranker.forward(pairs))
        finally:
            reranker.kernel = None

    failure = compare(lambda: scores(None), lambda: scores(kernel), dtype=model.dtype, device=reranker.device)
    reranker.attention_note = report_unpadded_check(reranker.name, kernel, failure, required=setting == "unpadded")
    if failure is None:
        reranker.kernel = kernel


def load_hf(spec: ModelSpec, placement: Placement, *, auto_class: str = "AutoModelForCausalLM") -> tuple[Any, Any]:
    """Model and tokenizer through transformers' Auto classes (hub download, cache, offline).

    sentence-transformers' CrossEncoder also loads causal LMs, but insists on "yes"/"no" tokens
    that bge-reranker-v2-gemma's scoring does not use, and cannot pass a remote model's own
    forward arguments; so decoder rerankers load here.
    """
    import transformers

    common: dict[str, Any] = dict(cache_dir=None if spec.local else str(spec.cache_dir), local_files_only=spec.offline,
                                  trust_remote_code=spec.trust_remote_code)
    tokenizer = transformers.AutoTokenizer.from_pretrained(spec.source, **common)
    kwargs: dict[str, Any] = dict(common, dtype=placement.dtype)
    implementation, _ = attn_implementation(spec, auto_class=auto_class)
    if implementation is not None:  # None: a model's own code, which may not know the implementations
        kwargs["attn_implementation"] = implementation
    model = getattr(transformers, auto_class).from_pretrained(spec.source, **kwargs).to(placement.device)
    return model, tokenizer


# How a causal family prompts and scores: (its tokenizer, the fast tokenizer, the spec) → the
# prompt template, the token whose logit is the score and the one subtracted from it (None: none).
CausalPrompt = Callable[[Any, Any, ModelSpec], tuple[PromptTemplate, int, int | None]]


def qwen3_prompt(hf_tokenizer: Any, tokenizer: Any, spec: ModelSpec) -> tuple[PromptTemplate, int, int | None]:
    """Qwen3-Reranker's model card: its chat prompt, logit("yes") - logit("no") (vocabulary tokens)."""
    template = qwen3_template(tokenizer, instruction=spec.instruction)
    return template, _token_id(hf_tokenizer, "yes", how="token"), _token_id(hf_tokenizer, "no", how="token")


def mxbai_v2_prompt(hf_tokenizer: Any, tokenizer: Any, spec: ModelSpec) -> tuple[PromptTemplate, int, int | None]:
    """mixedbread's score: logit("1") - logit("0") at the last position (first id of each text)."""
    template = mxbai_v2_template(tokenizer, instruction=spec.instruction)
    return template, _token_id(hf_tokenizer, "1", how="text"), _token_id(hf_tokenizer, "0", how="text")


def flag_llm_prompt(hf_tokenizer: Any, tokenizer: Any, spec: ModelSpec) -> tuple[PromptTemplate, int, int | None]:
    """FlagEmbedding's FlagLLMReranker: its "A:/B:" prompt, the "Yes" logit alone."""
    template = flag_llm_template(tokenizer, bos=flag_bos(hf_tokenizer), prompt=spec.instruction or FLAG_LLM_PROMPT)
    return template, _token_id(hf_tokenizer, "Yes", how="text"), None


def load_causal_lm(spec: ModelSpec, *, family: Family, placement: Placement, backend: str,
                   prompt: CausalPrompt) -> CausalLMReranker:
    model, hf_tokenizer = load_hf(spec, placement)
    tokenizer = rust_tokenizer(hf_tokenizer)
    template, true_id, false_id = prompt(hf_tokenizer, tokenizer, spec)
    reranker = CausalLMReranker(model, hf_tokenizer, name=spec.name, family=family.name, max_length=spec.max_length,
                                template=template, true_id=true_id, false_id=false_id,
                                share_prefix=family.shares_prefix and spec.share_prefix)
    if family.unpadded:
        choose_causal_attention(reranker, setting=spec.attention)
    return reranker


def flag_bos(hf_tokenizer: Any) -> int | None:
    """FlagEmbedding puts the bos token first unless there is none or it doubles as padding."""
    bos, pad_token = hf_tokenizer.bos_token_id, hf_tokenizer.pad_token_id
    return int(bos) if bos is not None and bos != pad_token else None
