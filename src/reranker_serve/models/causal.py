"""Decoder LLM rerankers scored from the next-token logits at the last position of their prompt.

    qwen3   Qwen3-Reranker (0.6B/4B/8B): the chat prompt of its model card; the score is
            P("yes") of the softmax over the "yes" and "no" logits, i.e. sigmoid(l_yes - l_no),
            and the raw score is that log-odds.
    llm     FlagEmbedding's FlagLLMReranker (bge-reranker-v2-gemma): "A: query", "B: passage" and
            a prompt; the raw score is the logit of "Yes", the score its sigmoid
            (``compute_score(normalize=True)``).

Pairs are padded on the left (the last position is each pair's own last token) with position
ids that start at each pair's first token, and only the last position's logits are computed
(``logits_to_keep=1``): the language-model head over the whole vocabulary is the costliest
layer of a small LLM, and only one of its rows per pair is needed.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch

from .base import EncodeOptions, Pair, pad, sigmoid
from .encoder import pad_id_of, window_limit
from .templates import FLAG_LLM_PROMPT, PromptTemplate, encode_pairs, flag_llm_template, qwen3_template, rust_tokenizer

__all__ = ["CausalLMReranker", "PromptedLM", "load_causal_lm", "load_hf"]


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
    takes_instruction = True

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

    def __init__(self, model: Any, hf_tokenizer: Any, *, true_id: int, false_id: int | None, **common: Any) -> None:
        super().__init__(model, hf_tokenizer, **common)
        self._true, self._false = true_id, false_id
        self._last_only = "logits_to_keep" in inspect.signature(self._model.forward).parameters

    @torch.inference_mode()
    def forward(self, batch: Sequence[Pair]) -> list[float]:
        inputs = pad(batch, self._pad_id, side="left", device=self.device)
        extra = {"logits_to_keep": 1} if self._last_only else {}
        logits = self._model(**inputs, use_cache=False, **extra).logits[:, -1, :].float()
        raw = logits[:, self._true]
        if self._false is not None:
            raw = raw - logits[:, self._false]
        return raw.cpu().tolist()


def load_hf(source: str, *, device: str, dtype: torch.dtype, cache_dir: str | None, offline: bool,
            trust_remote_code: bool, auto_class: str = "AutoModelForCausalLM") -> tuple[Any, Any]:
    """Model and tokenizer through transformers' Auto classes (hub download, cache, offline).

    sentence-transformers' CrossEncoder also loads causal LMs, but insists on "yes"/"no" tokens
    that bge-reranker-v2-gemma's scoring does not use, and cannot pass a remote model's own
    forward arguments; so decoder rerankers load here.
    """
    import transformers

    common: dict[str, Any] = dict(cache_dir=cache_dir, local_files_only=offline, trust_remote_code=trust_remote_code)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, **common)
    kwargs: dict[str, Any] = dict(common, dtype=dtype)
    if not trust_remote_code:  # a model's own code may not know the attention implementations
        kwargs["attn_implementation"] = "sdpa"
    model = getattr(transformers, auto_class).from_pretrained(source, **kwargs).to(device)
    return model, tokenizer


def load_causal_lm(source: str, *, family: str, name: str, max_length: int, device: str, dtype: torch.dtype,
                   cache_dir: str | None, offline: bool, trust_remote_code: bool,
                   instruction: str | None) -> CausalLMReranker:
    model, hf_tokenizer = load_hf(source, device=device, dtype=dtype, cache_dir=cache_dir, offline=offline,
                                  trust_remote_code=trust_remote_code)
    tokenizer = rust_tokenizer(hf_tokenizer)
    if family == "qwen3":
        template = qwen3_template(tokenizer, instruction=instruction)
        true_id = _token_id(hf_tokenizer, "yes", how="token")
        false_id: int | None = _token_id(hf_tokenizer, "no", how="token")
    else:
        template = flag_llm_template(tokenizer, bos=flag_bos(hf_tokenizer), prompt=instruction or FLAG_LLM_PROMPT)
        true_id, false_id = _token_id(hf_tokenizer, "Yes", how="text"), None
    return CausalLMReranker(model, hf_tokenizer, name=name, family=family, max_length=max_length,
                            template=template, true_id=true_id, false_id=false_id)


def flag_bos(hf_tokenizer: Any) -> int | None:
    """FlagEmbedding puts the bos token first unless there is none or it doubles as padding."""
    bos, pad_token = hf_tokenizer.bos_token_id, hf_tokenizer.pad_token_id
    return int(bos) if bos is not None and bos != pad_token else None
