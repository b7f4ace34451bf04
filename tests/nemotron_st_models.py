"""Tiny random-weight checkpoints in the published layouts of llama-nemotron-rerank-1b-v2 and of a
modular sentence-transformers CrossEncoder (ettin-reranker), built on the spot (no hub).

    build_nemotron   config.json as nvidia/llama-nemotron-rerank-1b-v2 publishes it (architectures
                     LlamaBidirectionalForSequenceClassification, model_type llama_bidirec, auto_map
                     into llama_bidirectional_model.py, pooling, temperature), LlamaForSequenceClassification
                     weight names (model.*, score.weight), a Llama-3-style byte-level BPE tokenizer
                     (<|begin_of_text|> before each text). Its llama_bidirectional_model.py refuses to
                     be imported: the server must never run it.
    build_modular    a CrossEncoder saved by sentence-transformers itself (modules.json,
                     config_sentence_transformers.json, 1_Pooling/, 2_Dense/, ...), on a bare
                     ModernBertModel: ettin-reranker's stack (cls Pooling, Dense GELU, LayerNorm,
                     Dense to one score, activation Identity), or with mean pooling, a Sigmoid and a
                     default prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

from architectures import WORDS, _bytelevel

# Llama 3's pre-tokenizer split (tokenizer.json of meta-llama/Llama-3.2-1B).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
NEMOTRON_AUTO_MAP = {
    "AutoConfig": "llama_bidirectional_model.LlamaBidirectionalConfig",
    "AutoModel": "llama_bidirectional_model.LlamaBidirectionalModel",
    "AutoModelForSequenceClassification": "llama_bidirectional_model.LlamaBidirectionalForSequenceClassification",
}
REFUSING_CODE = 'raise ImportError("the published remote code must not run in these tests")\n'


def _llama3_tokenizer(out: Path, *, max_length: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(WORDS + ["question: passage: \n \n "] * 20,
                            trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
        special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, bos_token="<|begin_of_text|>",
                                   eos_token="<|end_of_text|>")
    fast.model_input_names = ["input_ids", "attention_mask"]
    fast.save_pretrained(out)
    return tok


def build_nemotron(out: Path, *, seed: int = 0, pooling: str = "avg", temperature: float = 1.0, hidden: int = 32,
                   layers: int = 2, heads: int = 4, kv_heads: int = 2, intermediate: int = 64,
                   max_length: int = 8192, init: float = 0.3) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = _llama3_tokenizer(out, max_length=max_length)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         head_dim=hidden // heads, max_position_embeddings=131072, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8192},
                         tie_word_embeddings=True, initializer_range=init, num_labels=1,
                         bos_token_id=tok.token_to_id("<|begin_of_text|>"),
                         eos_token_id=tok.token_to_id("<|end_of_text|>"))
    LlamaForSequenceClassification(config).eval().save_pretrained(out)
    published = json.loads((out / "config.json").read_text())
    published.update(architectures=["LlamaBidirectionalForSequenceClassification"], auto_map=NEMOTRON_AUTO_MAP,
                     model_type="llama_bidirec", pooling=pooling, temperature=temperature)
    (out / "config.json").write_text(json.dumps(published, indent=2))
    (out / "llama_bidirectional_model.py").write_text(REFUSING_CODE)
    return out


def build_modular(out: Path, *, seed: int = 0, pooling: str = "cls", activation: str = "Identity",
                  prompt: str | None = None, hidden: int = 32, layers: int = 2, intermediate: int = 64,
                  window: int = 16, head_std: float = 0.5) -> Path:
    import torch
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Dense, Transformer
    from sentence_transformers.sentence_transformer.modules import LayerNorm, Pooling
    from transformers import ModernBertConfig, ModernBertModel

    base = out.parent / f"{out.name}-encoder"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = _bytelevel(base, template="[CLS] $A [SEP] | [CLS] $A [SEP] $B [SEP]", specials=specials,
                     input_names=["input_ids", "attention_mask"], max_length=8192, pad_token="[PAD]",
                     unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(seed)
    config = ModernBertConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, intermediate_size=intermediate,
                              num_hidden_layers=layers, num_attention_heads=max(2, hidden // 64),
                              max_position_embeddings=8192, local_attention=window, global_attn_every_n_layers=2,
                              pad_token_id=0, cls_token_id=2, sep_token_id=3, bos_token_id=2, eos_token_id=3,
                              initializer_range=0.3)
    encoder = ModernBertModel(config)
    encoder.config.architectures = ["ModernBertModel"]
    encoder.save_pretrained(base)
    head = [Dense(hidden, hidden, bias=False, activation_function=torch.nn.GELU()), LayerNorm(hidden),
            Dense(hidden, 1, bias=True, activation_function=torch.nn.Identity(), module_output_name="scores")]
    for module in head:
        for p in module.parameters():
            torch.nn.init.normal_(p, std=head_std)  # wide: scores far apart
    modules = [Transformer(str(base), transformer_task="feature-extraction"), Pooling(hidden, pooling_mode=pooling),
               *head]
    prompts = {"query": prompt} if prompt else None
    cross_encoder = CrossEncoder(modules=modules, activation_fn=getattr(torch.nn, activation)(), prompts=prompts,
                                 default_prompt_name="query" if prompt else None)
    cross_encoder.save_pretrained(str(out))
    return out
