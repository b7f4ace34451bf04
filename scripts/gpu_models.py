#!/usr/bin/env python3
"""A random-weight Qwen3-Reranker with the published 0.6B architecture, for the GPU check.

make_synthetic_model.py (../shared/tools) builds the XLM-RoBERTa cross-encoders; the Qwen3
tokenizer is not on these machines, so this builds a byte-level BPE with Qwen's chat tokens and
"yes"/"no" (what the server's qwen3 family needs), trained on the benchmark's own text so that
token counts per pair are of the real tokenizer's order, under a model of Qwen3-Reranker-0.6B's
published sizes (its embedding keeps the real vocabulary size). Speed is faithful; scores are
meaningless.

    python scripts/gpu_models.py qwen3-reranker-0.6b /tmp/m/qwen3-0.6b
    python scripts/gpu_models.py qwen3-tiny /tmp/m/qwen3-tiny      # the CPU rehearsal's stand-in
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "vaswani"

# Qwen3-Reranker-0.6B's config.json (hidden 1024, 28 layers, 16 query / 8 key-value heads of 128).
SHAPES = {
    "qwen3-reranker-0.6b": dict(vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                                num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                                max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6,
                                tie_word_embeddings=True),
    "qwen3-tiny": dict(vocab_size=None, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=8192,
                       rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
}
PROMPT_WORDS = [
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided.",
    "Note that the answer can only be \"yes\" or \"no\".",
    "Given a web search query, retrieve relevant passages that answer the query",
]


def corpus(data: Path, limit: int | None = None) -> list[str]:
    texts: list[str] = []
    for path in sorted((data / "corpus").glob("*")):
        texts += [t.strip() for t in re.findall(r"</DOCNO>(.*?)</DOC>", path.read_text(), re.DOTALL)]
    return texts[:limit] or ["the quick brown fox jumps over the lazy dog"] * 100


def build(shape: str, out: Path, *, data: Path, vocab: int, max_docs: int | None = None, seed: int = 0) -> None:
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(data, max_docs) + PROMPT_WORDS * 10, trainer)
    tok.add_tokens(["<think>", "</think>", AddedToken("yes", single_word=True), AddedToken("no", single_word=True)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=8192, pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>")
    fast.model_input_names = ["input_ids", "attention_mask"]
    sizes = dict(SHAPES[shape])
    sizes["vocab_size"] = sizes["vocab_size"] or tok.get_vocab_size()
    assert sizes["vocab_size"] >= tok.get_vocab_size()
    torch.manual_seed(seed)
    config = Qwen3Config(**sizes, pad_token_id=tok.token_to_id("<|endoftext|>"), initializer_range=0.02)
    config.architectures = ["Qwen3ForCausalLM"]
    with torch.device("cpu"):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16).eval()  # the published checkpoints are bf16
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    fast.save_pretrained(out)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Vaswani-style collection to train the BPE on")
    ap.add_argument("--vocab", type=int, default=8000, help="BPE pieces learned (the model keeps its own size)")
    ap.add_argument("--max-docs", type=int, help="train the BPE on the first N documents only")
    args = ap.parse_args(argv)
    build(args.shape, args.out, data=args.data, vocab=args.vocab, max_docs=args.max_docs)
    print(f"{args.shape} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
