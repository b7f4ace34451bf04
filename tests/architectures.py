"""Tiny random-weight models of the cross-encoder architectures people serve, and mxbai-rerank-v2.

Each has 2 layers and a tokenizer trained here that builds the pair input the way the published
model's does:

    bert        cross-encoder/ms-marco-MiniLM-L6-v2: WordPiece, lower case,
                ``[CLS] A [SEP] B [SEP]`` with token types 0/1
    electra     cross-encoder/ms-marco-electra-base: the same tokenizer, ELECTRA (embedding size
                smaller than hidden, projected)
    bert-2      a 2-label BERT classifier (scored as softmax[1])
    xlmr-long   a long-context XLM-RoBERTa (4,096 positions): SentencePiece-like BPE, ``<s> A </s></s> B </s>``
    modernbert  Alibaba-NLP/gte-reranker-modernbert-base: byte-level BPE, ``[CLS] A [SEP] B [SEP]``, no
                token types, local attention every other layer (a small window, so test pairs cross it),
                mean pooling (also ``cls``)
    deberta     mixedbread-ai/mxbai-rerank-base-v1 (DeBERTa-v3): Unigram/Metaspace,
                ``[CLS] A [SEP] B [SEP]``, relative positions, no token type embeddings
    gte         Alibaba's GTE "new" architecture as transformers has it natively (``GteForSequenceClassification``):
                the XLM-R tokenizer, rotary positions
    mxbai-v2    mixedbread-ai/mxbai-rerank-base-v2: Qwen2ForCausalLM, byte-level BPE with Qwen's chat
                tokens, in a folder named like the published one
"""

from __future__ import annotations

from pathlib import Path

from conftest import CORPUS, build_tiny_model

WORDS = CORPUS + [
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    "query: document: instruction: Relevance: 0 1",
    "You are a search relevance expert who evaluates how well documents match search queries.",
] * 3


def _save(tok, out: Path, *, input_names: list[str], max_length: int, **special: str) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, **special)
    fast.model_input_names = input_names
    fast.save_pretrained(out)


def _wordpiece(out: Path, *, max_length: int = 512) -> int:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(WORDS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials,
                                                             show_progress=False))
    tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    _save(tok, out, input_names=["input_ids", "token_type_ids", "attention_mask"], max_length=max_length,
          pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    return tok.get_vocab_size()


def _bytelevel(out: Path, *, template: str, specials: list[str], input_names: list[str], max_length: int,
               **special: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(WORDS, trainers.BpeTrainer(vocab_size=500, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if template:
        single, pair = template.split(" | ")
        tok.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(s, tok.token_to_id(s)) for s in specials if s in template])
    _save(tok, out, input_names=input_names, max_length=max_length, **special)
    return tok


def _save_model(model, out: Path, architecture: str) -> Path:
    model.config.architectures = [architecture]
    model.eval().save_pretrained(out)
    return out


def build_bert(out: Path, *, labels: int = 1, seed: int = 0, electra: bool = False) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, ElectraConfig, ElectraForSequenceClassification

    vocab = _wordpiece(out)
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=512, type_vocab_size=2, pad_token_id=0, num_labels=labels,
                  initializer_range=0.3)
    if electra:
        model = ElectraForSequenceClassification(ElectraConfig(embedding_size=16, **common))
        return _save_model(model, out, "ElectraForSequenceClassification")
    return _save_model(BertForSequenceClassification(BertConfig(**common)), out, "BertForSequenceClassification")


def build_xlmr_long(out: Path) -> Path:
    return build_tiny_model(out, max_positions=4098, seed=1)


def build_modernbert(out: Path, *, pooling: str = "mean", window: int = 16, seed: int = 0) -> Path:
    import torch
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = _bytelevel(out, template="[CLS] $A [SEP] | [CLS] $A [SEP] $B [SEP]", specials=specials,
                     input_names=["input_ids", "attention_mask"], max_length=8192, pad_token="[PAD]",
                     unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(seed)
    config = ModernBertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=8192,
                              local_attention=window, global_attn_every_n_layers=2, classifier_pooling=pooling,
                              num_labels=1, pad_token_id=0, cls_token_id=2, sep_token_id=3, bos_token_id=2,
                              eos_token_id=3, initializer_range=0.3)
    return _save_model(ModernBertForSequenceClassification(config), out, "ModernBertForSequenceClassification")


def build_deberta_v3(out: Path, *, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Replace("``", '"'), normalizers.Replace("''", '"')])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(WORDS, trainers.UnigramTrainer(vocab_size=300, special_tokens=specials, unk_token="[UNK]",
                                                           show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    _save(tok, out, input_names=["input_ids", "token_type_ids", "attention_mask"], max_length=512,
          pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]", mask_token="[MASK]")
    torch.manual_seed(seed)
    # mxbai-rerank-base-v1's layout: relative attention with log buckets, shared keys, no absolute
    # positions, no token type embeddings.
    config = DebertaV2Config(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=2, intermediate_size=64, max_position_embeddings=512,
                             relative_attention=True, position_buckets=32, norm_rel_ebd="layer_norm",
                             share_att_key=True, pos_att_type=["p2c", "c2p"], max_relative_positions=-1,
                             position_biased_input=False, type_vocab_size=0, pad_token_id=0, num_labels=1,
                             initializer_range=0.3)
    return _save_model(DebertaV2ForSequenceClassification(config), out, "DebertaV2ForSequenceClassification")


def build_gte(out: Path, *, seed: int = 0) -> Path:
    import torch
    from transformers import GteConfig, GteForSequenceClassification

    build_tiny_model(out / "_tokenizer")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "_tokenizer")
    tokenizer.model_max_length = 8192
    tokenizer.save_pretrained(out)
    torch.manual_seed(seed)
    config = GteConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=8192, type_vocab_size=1, pad_token_id=1,
                       num_labels=1, initializer_range=0.3)
    return _save_model(GteForSequenceClassification(config), out, "GteForSequenceClassification")


def build_qwen2_lm(out: Path, *, seed: int = 0) -> Path:
    """A Qwen2ForCausalLM with a Qwen-like tokenizer (mxbai-rerank-v2's shape when its folder says so)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = _bytelevel(out, template="", specials=specials, input_names=["input_ids", "attention_mask"],
                     max_length=32768, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, initializer_range=0.3,
                         pad_token_id=tok.token_to_id("<|endoftext|>"))
    return _save_model(Qwen2ForCausalLM(config), out, "Qwen2ForCausalLM")
