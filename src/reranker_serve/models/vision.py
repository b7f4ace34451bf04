"""Vision-language rerankers: image queries and documents ranked beside text ones.

    qwen3-vl   Qwen3-VL-Reranker (2B/8B): Qwen3-VL scored as Qwen3-Reranker is, P("yes") of the
               softmax over the "yes"/"no" logits at the last position (the raw score is
               logit(yes) - logit(no)), after the chat prompt of its model card's script: the
               system turn, then one user turn of "<Instruct>: I", "<Query>:" with the query's
               image and text, "\\n<Document>:" with the document's image and text (an empty side
               is "NULL"), then the generation prompt. Images are resized by the model's image
               processor between the script's min and max pixels (4 and 1,800 merged patches).
    jina-m0    jina-reranker-m0: Qwen2-VL whose last hidden state at the last position goes
               through its two-layer score head (``score.0``, ReLU, ``score.2``); the prompt of its
               modeling.py, "**Document**:\\n" D "\\n**Query**:\\n" Q (an image as the vision
               placeholder), then its score token (id 100) appended; the score is
               sigmoid(raw - 2.65), its published normalisation. Implemented here on
               transformers' Qwen2-VL: the published remote code is not run.

A pair is one prompt tokenized whole, as the processor does it, with each image's placeholder
expanded into the image's merged patches (so a pair's length, hence the token budget, usage and
batching, counts image tokens). Its text parts are fitted to the window by ``templates.fit``
(the document's text yields first; an image is never cut). The image processor's output rides
on the pair (``Pair.media``) and a batch concatenates it in prompt order, as the model expects.
Pairs are padded on the left; the model computes its own (multimodal rotary) positions from the
attention mask, so a padded pair scores as it would alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..config import ModelSpec
from ..device import Placement, sdpa_backends
from ..errors import ErrorKind, RerankError
from ..families import Family
from ..media import MediaDocument, Picture
from .architectures import attn_implementation
from .base import EncodeOptions, Pair, pad, sigmoid, to_device
from .hf import pad_id_of
from .templates import _token_span, fit, rust_tokenizer

__all__ = ["JINA_M0", "QWEN3_VL", "VisionRecipe", "VisionReranker", "load_vision_reranker"]

QWEN3_VL_SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
                   'Note that the answer can only be "yes" or "no".')
QWEN3_VL_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
# The script's image bounds (IMAGE_FACTOR 32 = patch 16 x merge 2): 4 to 1,800 merged patches.
QWEN3_VL_PIXELS = (4 * 32 * 32, 1800 * 32 * 32)
# jina-reranker-m0's processor bounds (its compute_score) and its normalisation bias.
JINA_M0_PIXELS = (3136, 602112)
JINA_M0_BIAS = 2.65
JINA_M0_SCORE_TOKEN = 100
# m0's checkpoint names its weights as transformers 4.4x's Qwen2-VL did (model.layers.*, visual.*):
# where transformers 5 keeps them (its own renaming is keyed by class name, so not applied to ours).
JINA_M0_WEIGHTS = {r"^visual": "model.visual", r"^model(?!\.(language_model|visual))": "model.language_model"}
PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"

# A prompt piece: literal text, or ("query" | "doc", text), or ("image", picture).
Piece = str | tuple[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class VisionRecipe:
    """What sets one vision-language family apart (bound per family in models/loader.py's LOADERS)."""

    prompt: Callable[[Any, Any, str], list[Piece]]  # (query, document, instruction) -> prompt pieces
    pixels: tuple[int, int]  # the image processor's min and max pixels
    instruction: str | None  # the default instruction; None: the family takes none
    build: Callable[[ModelSpec, dict[str, Any], Any], tuple[Any, Callable[[Any, torch.Tensor], torch.Tensor]]]
    suffix: tuple[int, ...] = ()  # token ids appended to every prompt
    bias: float = 0.0  # the score is sigmoid(raw - bias)


def _side(item: Any) -> tuple[Picture | None, str]:
    if isinstance(item, MediaDocument):
        return item.picture, item.text
    return None, item


def qwen3_vl_prompt(query: Any, doc: Any, instruction: str) -> list[Piece]:
    """The official script's messages, rendered as Qwen3-VL's chat template renders them."""
    pieces: list[Piece] = [f"<|im_start|>system\n{QWEN3_VL_SYSTEM}<|im_end|>\n<|im_start|>user\n",
                           f"<Instruct>: {instruction}"]
    for label, item, name in (("<Query>:", query, "query"), ("\n<Document>:", doc, "doc")):
        picture, text = _side(item)
        pieces.append(label)
        if picture is None and not text:
            pieces.append("NULL")
        if picture is not None:
            pieces.append(("image", picture))
        pieces.append((name, text))
    pieces.append("<|im_end|>\n<|im_start|>assistant\n")
    return pieces


def jina_m0_prompt(query: Any, doc: Any, instruction: str) -> list[Piece]:
    """modeling.py's formatting_prompts_func: the document first, then the query."""
    pieces: list[Piece] = []
    for label, item, name in (("**Document**:\n", doc, "doc"), ("\n**Query**:\n", query, "query")):
        picture, text = _side(item)
        pieces.append(label)
        if picture is not None:
            pieces.append(("image", picture))
        pieces.append((name, text))
    return pieces


class VisionReranker:
    """A vision-language model scored at the last position of its prompt (see the module doc)."""

    backend = "torch"
    backend_note = ""
    attention = "padded"
    attention_note = ""
    padded = True
    asynchronous = False
    launch = None
    quantization = None  # int8 is for cross-encoders (models/quantize.py)

    def __init__(self, model: Any, hf_tokenizer: Any, image_processor: Any, *, name: str, family: str,
                 max_length: int, recipe: VisionRecipe, head: Callable[[Any, torch.Tensor], torch.Tensor],
                 instruction: str | None = None) -> None:
        self._model = model.eval()
        self.name = name
        self.family = family
        self.device = str(model.device)
        self.dtype_name = str(model.dtype).removeprefix("torch.")
        self.takes_instruction = recipe.instruction is not None
        # The default instruction: RERANKER_INSTRUCTION (or the model's own), else the family's.
        self.instruction = (instruction or recipe.instruction or "") if self.takes_instruction else ""
        self._prompt = recipe.prompt
        self._suffix = list(recipe.suffix)
        self._bias = recipe.bias
        self._head = head  # (model, last hidden states) -> raw scores
        pixels = recipe.pixels
        self.tokenizer = rust_tokenizer(hf_tokenizer)
        self._images = image_processor
        self._merge = int(self._images.merge_size)
        self._min_pixels, self._max_pixels = pixels
        config = model.config
        self._image_id = int(config.image_token_id)
        placeholder = self.tokenizer.encode(PLACEHOLDER, add_special_tokens=False).ids
        if len(placeholder) != 3 or placeholder[1] != self._image_id:
            raise ValueError("the tokenizer does not turn <|vision_start|><|image_pad|><|vision_end|> into the "
                             f"model's image token (image_token_id {self._image_id})")
        self._pad_id = pad_id_of(hf_tokenizer, config.get_text_config())
        text = config.get_text_config()
        limit = int(getattr(text, "max_position_embeddings", max_length) or max_length)
        self.max_length = min(max_length, limit)

    # -- pairs -------------------------------------------------------------------------------------
    def _process(self, picture: Picture) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The image processor's patches and grid for one picture, and its token count."""
        out = self._images(images=[picture.image], return_tensors="pt",
                           size={"shortest_edge": self._min_pixels, "longest_edge": self._max_pixels})
        grid = out["image_grid_thw"]
        return out["pixel_values"], grid, int(grid.prod()) // (self._merge ** 2)

    def encode(self, query: Any, documents: Sequence[Any], options: EncodeOptions) -> list[Pair]:
        instruction = self.instruction if options.instruction is None else options.instruction
        processed: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}  # the query's image: once
        pairs: list[Pair] = []
        for index, doc in enumerate(documents):
            pieces = self._prompt(query, doc, instruction)
            text, spans, pictures = "", {}, []
            for piece in pieces:
                if isinstance(piece, str):
                    text += piece
                elif piece[0] == "image":
                    text += PLACEHOLDER
                    pictures.append(piece[1])
                else:
                    spans[piece[0]] = (len(text), len(text) + len(piece[1]))
                    text += piece[1]
            encoding = self.tokenizer.encode(text, add_special_tokens=False)
            ids = list(encoding.ids) + self._suffix
            q0, q1 = _token_span(encoding.offsets, *spans["query"])
            d0, d1 = _token_span(encoding.offsets, *spans["doc"])
            media = []
            for picture in pictures:
                if id(picture) not in processed:
                    processed[id(picture)] = self._process(picture)
                media.append(processed[id(picture)])
            image_tokens = sum(n for _, _, n in media) - len(media)  # the placeholders become n tokens each
            fixed = len(ids) - (q1 - q0) - (d1 - d0) + image_tokens
            if fixed >= options.max_length:
                raise RerankError(
                    ErrorKind.PAYLOAD_TOO_LARGE,
                    f"documents[{index}]: its image{'s' if len(media) > 1 else ''} and the prompt take {fixed} tokens, "
                    f"more than the {options.max_length} a pair may have; send a smaller image or raise "
                    "RERANKER_MAX_LENGTH",
                )
            for q, d in fit(ids[q0:q1], ids[d0:d1], fixed, options):
                spliced = _splice(ids, {(q0, q1): q, (d0, d1): d})
                # Where the document's text sits once the images before it are expanded.
                start = d0 + (len(q) - (q1 - q0) if q0 < d0 else 0)
                grown = sum(n - 1 for _, _, n in media[: spliced[:start].count(self._image_id)])
                expanded = self._expand(spliced, media)
                pairs.append(Pair(expanded, doc=index, before_doc=start + grown,
                                  after_doc=len(expanded) - (start + grown + len(d)),
                                  media=tuple((pixels, grid) for pixels, grid, _ in media)))
        return pairs

    def _expand(self, ids: list[int], media: list[tuple[torch.Tensor, torch.Tensor, int]]) -> list[int]:
        out: list[int] = []
        images = iter(media)
        for token in ids:
            if token == self._image_id:
                out.extend([token] * next(images)[2])
            else:
                out.append(token)
        return out

    # -- scores ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, batch: Sequence[Pair]) -> list[float]:
        inputs = pad(batch, self._pad_id, side="left", device=self.device)
        pixels = [p for pair in batch for p, _ in pair.media]
        if pixels:
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            grid = to_device(torch.cat([g for pair in batch for _, g in pair.media]), self.device)
            inputs["pixel_values"] = to_device(torch.cat(pixels), self.device).to(self._model.dtype)
            inputs["image_grid_thw"] = grid
            # The multimodal rotary positions, computed here from the mask (so from each pair's
            # first real token) rather than by the model, which keeps the last batch's offsets.
            inputs["position_ids"], _ = self._model.model.get_rope_index(
                ids, (ids == self._image_id).int(), image_grid_thw=grid, attention_mask=mask)
        # (Without an image the 1-D positions of pad() are the text positions the model expands.)
        with sdpa_backends(self.device):
            hidden = self._model.model(**inputs, use_cache=False).last_hidden_state[:, -1]
        return self._head(self._model, hidden).float().tolist()  # type: ignore[no-any-return]

    def activate(self, raw: float) -> float:
        return sigmoid(raw - self._bias)


def _splice(ids: list[int], parts: dict[tuple[int, int], list[int]]) -> list[int]:
    """``ids`` with each [start, end) span replaced by its new tokens."""
    out, at = [], 0
    for (start, end), tokens in sorted(parts.items()):
        out += ids[at:start] + tokens
        at = end
    return out + ids[at:]


def _jina_m0_class() -> type:
    from transformers import Qwen2VLForConditionalGeneration

    class JinaVLForRanking(Qwen2VLForConditionalGeneration):
        """Qwen2-VL plus jina-reranker-m0's score head, with the weight names it publishes."""

        def __init__(self, config: Any) -> None:
            super().__init__(config)
            hidden = config.get_text_config().hidden_size
            self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
            self.post_init()

    return JinaVLForRanking


def _qwen3_vl_model(spec: ModelSpec, kwargs: dict[str, Any], hf_tokenizer: Any) -> tuple[Any, Callable[..., Any]]:
    """Qwen3-VL and its yes/no head: logit(yes) - logit(no) from those two rows of the LM head."""
    from transformers import Qwen3VLForConditionalGeneration

    vocab = hf_tokenizer.get_vocab()
    if "yes" not in vocab or "no" not in vocab:
        raise ValueError("the tokenizer has no 'yes' / 'no' tokens, which Qwen3-VL-Reranker is scored by")
    rows = [vocab["yes"], vocab["no"]]

    def head(model: Any, hidden: torch.Tensor) -> torch.Tensor:
        logits = (hidden @ model.lm_head.weight[rows].T).float()
        return logits[:, 0] - logits[:, 1]

    return Qwen3VLForConditionalGeneration.from_pretrained(spec.source, **kwargs), head


def _jina_m0_model(spec: ModelSpec, kwargs: dict[str, Any], hf_tokenizer: Any) -> tuple[Any, Callable[..., Any]]:
    """m0's Qwen2-VL from its published weight names, and its score head."""
    model = _jina_m0_class().from_pretrained(spec.source, key_mapping=JINA_M0_WEIGHTS, **kwargs)
    model.lm_head = nn.Identity()  # m0 publishes no LM head: only the score head is used
    return model, lambda m, hidden: m.score(hidden).squeeze(-1)


QWEN3_VL = VisionRecipe(prompt=qwen3_vl_prompt, pixels=QWEN3_VL_PIXELS, instruction=QWEN3_VL_INSTRUCTION,
                        build=_qwen3_vl_model)
JINA_M0 = VisionRecipe(prompt=jina_m0_prompt, pixels=JINA_M0_PIXELS, instruction=None, build=_jina_m0_model,
                       suffix=(JINA_M0_SCORE_TOKEN,), bias=JINA_M0_BIAS)


def load_vision_reranker(spec: ModelSpec, *, family: Family, placement: Placement, backend: str,
                         recipe: VisionRecipe) -> VisionReranker:
    """The model, its tokenizer and its image processor (not AutoProcessor: its video half needs
    torchvision, and a reranker scores no video)."""
    import transformers

    common: dict[str, Any] = dict(cache_dir=None if spec.local else str(spec.cache_dir), local_files_only=spec.offline)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(spec.source, **common)
    image_processor = transformers.AutoImageProcessor.from_pretrained(spec.source, **common)
    kwargs: dict[str, Any] = dict(common, dtype=placement.dtype)
    implementation, _ = attn_implementation(spec, auto_class="AutoModelForImageTextToText")
    if implementation is not None:
        kwargs["attn_implementation"] = implementation
    model, head = recipe.build(spec, kwargs, hf_tokenizer)
    return VisionReranker(model.to(placement.device), hf_tokenizer, image_processor, name=spec.name,
                          family=family.name, max_length=spec.max_length, recipe=recipe, head=head,
                          instruction=spec.instruction)
