"""Tiny random-weight vision-language rerankers, built on the spot (no hub), and small images.

    build_qwen3_vl   Qwen3VLForConditionalGeneration (Qwen3-VL-Reranker's architecture) with a
                     byte-level BPE tokenizer holding Qwen's chat and vision tokens and "yes"/"no",
                     saved with a real Qwen2-VL image processor configuration (patch 16, merge 2) and a
                     chat template that renders content lists as Qwen3-VL's does
    build_jina_m0    jina-reranker-m0's published checkpoint layout: a Qwen2-VL (patch 14) whose
                     weights are named as the 4.4x-era checkpoints name them (model.*, visual.*),
                     without an LM head, plus score.0 / score.2 and architectures JinaVLForRanking
    png / jpeg       small generated images, as bytes
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

from conftest import CORPUS
from llm_models import CHAT_WORDS

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

# Qwen3-VL's chat template, reduced to what a reranker prompt uses: string or content-list
# turns, text parts concatenated, an image part as the vision placeholder, the generation prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message.role + '\\n' -}}"
    "{%- if message.content is string -%}{{- message.content -}}"
    "{%- else -%}{%- for content in message.content -%}"
    "{%- if content.type == 'image' or 'image' in content -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in content -%}{{- content.text -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def _tokenizer(out: Path):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *VISION_TOKENS]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    words = ["<Instruct>: <Query>: <Document>: **Document**: **Query**: NULL"] * 10
    tok.train_from_iterator(CORPUS + CHAT_WORDS * 5 + words, trainer)
    tok.add_tokens([AddedToken("yes", single_word=True), AddedToken("no", single_word=True)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=4096, pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>", extra_special_tokens={
                                       "image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                       "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"})
    fast.model_input_names = ["input_ids", "attention_mask"]
    return tok, fast


def build_qwen3_vl(out: Path, *, seed: int = 0) -> Path:
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok, fast = _tokenizer(out)
    images = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3,
                                      image_std=[0.5] * 3, size={"shortest_edge": 64 * 64, "longest_edge": 256 * 256})
    # The tokenizer and the image processor as the hub repo holds them (Qwen3VLProcessor itself
    # needs torchvision for its video half, which a reranker never uses).
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    images.save_pretrained(out)
    ids = {t: tok.token_to_id(t) for t in VISION_TOKENS}
    torch.manual_seed(seed)
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=4096,
                         initializer_range=0.3, pad_token_id=tok.token_to_id("<|endoftext|>"),
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                           deepstack_visual_indexes=[0], initializer_range=0.3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen3VLForConditionalGeneration"]
    Qwen3VLForConditionalGeneration(config).eval().save_pretrained(out)
    return out


def build_jina_m0(out: Path, *, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok, fast = _tokenizer(out)
    fast.save_pretrained(out)
    Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2).save_pretrained(out)
    ids = {t: tok.token_to_id(t) for t in VISION_TOKENS}
    torch.manual_seed(seed)
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         initializer_range=0.3, pad_token_id=tok.token_to_id("<|endoftext|>"), bos_token_id=None,
                         eos_token_id=None,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, initializer_range=0.3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    model = Qwen2VLForConditionalGeneration(config).eval()
    # The published layout: language model under model.*, the vision tower under visual.*, no LM
    # head (m0 replaces it with an identity), and the score head score.0 / score.2.
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("model.language_model."):
            state["model." + name.removeprefix("model.language_model.")] = tensor.contiguous()
        elif name.startswith("model.visual."):
            state["visual." + name.removeprefix("model.visual.")] = tensor.contiguous()
    hidden = config.text_config.hidden_size
    state["score.0.weight"] = torch.randn(hidden, hidden) * 0.3
    state["score.0.bias"] = torch.randn(hidden) * 0.3
    state["score.2.weight"] = torch.randn(1, hidden) * 0.3
    state["score.2.bias"] = torch.randn(1) * 0.3
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.architectures = ["JinaVLForRanking"]
    config.auto_map = {"AutoModel": "modeling.JinaVLForRanking"}  # its remote code, which is not shipped here
    config.save_pretrained(out)
    return out


def png(width: int = 40, height: int = 32, *, seed: int = 0) -> bytes:
    """A small PNG of random colours (different seeds: different pictures)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(width: int = 48, height: int = 40, *, seed: int = 0) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds one compressed row: a decompression
    bomb's header, built without allocating its pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64,{b64(data)}"


__all__ = ["build_jina_m0", "build_qwen3_vl", "png", "jpeg", "png_header", "b64", "data_url", "json"]
