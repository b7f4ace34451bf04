"""Tiny random-weight models of every LLM reranker family, built on the spot (no hub).

    build_qwen3            Qwen3ForCausalLM with a byte-level BPE tokenizer that has Qwen's chat
                           tokens and "yes"/"no" (Qwen3-Reranker's shape)
    convert_qwen3_seq_cls  that model as Qwen3ForSequenceClassification with one label, the score
                           row being lm_head[yes] - lm_head[no] (how the -seq-cls checkpoints are made)
    build_gemma            GemmaForCausalLM with <bos>/<eos>/<pad> (bge-reranker-v2-gemma's shape)
    build_remote           models whose code ships in their folder (auto_map): the forward interface
                           of bge-reranker-v2-minicpm-layerwise (cutoff_layers, one score per position
                           per layer) or of v2.5-gemma2-lightweight (plus token compression)

The remote-code models are stand-ins written here, not the published architectures: they keep
the published call signature and output shape, and are causal and padding-aware, so a wrong
padding side, position ids, layer or compression argument changes their scores.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from conftest import CORPUS

CHAT_WORDS = ["Judge whether the Document meets the requirements based on the Query and the Instruct provided.",
              "Given a web search query, retrieve relevant passages that answer the query",
              "Given a query A and a passage B, determine whether the passage contains an answer",
              "Note that the answer can only be yes or no. Predict whether passage B contains an answer to query A."]


def _save_tokenizer(tok, out: Path, **special: str) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=1024, **special)
    fast.model_input_names = ["input_ids", "attention_mask"]
    fast.save_pretrained(out)


def build_qwen3(out: Path, *, seed: int = 0) -> Path:
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen3Config, Qwen3ForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS + CHAT_WORDS * 5, trainer)
    tok.add_tokens(["<think>", "</think>", AddedToken("yes", single_word=True), AddedToken("no", single_word=True)])
    _save_tokenizer(tok, out, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
                         tie_word_embeddings=False, initializer_range=0.3, pad_token_id=tok.token_to_id("<|endoftext|>"))
    config.architectures = ["Qwen3ForCausalLM"]
    Qwen3ForCausalLM(config).eval().save_pretrained(out)
    return out


def convert_qwen3_seq_cls(causal: Path, out: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(causal)
    lm = AutoModelForCausalLM.from_pretrained(causal)
    config = lm.config
    config.num_labels = 1
    config.architectures = ["Qwen3ForSequenceClassification"]
    classifier = Qwen3ForSequenceClassification(config).eval()
    classifier.model.load_state_dict(lm.model.state_dict())
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    classifier.score.weight.data = (lm.lm_head.weight[yes] - lm.lm_head.weight[no]).unsqueeze(0).clone()
    classifier.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _spm_like_tokenizer(out: Path):
    """A small BPE with <pad>/<eos>/<bos>/<unk> and Metaspace, Gemma's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
                                  show_progress=False)
    tok.train_from_iterator(CORPUS + CHAT_WORDS * 5 + ["Yes No\nA: B:\n"] * 20, trainer)
    _save_tokenizer(tok, out, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>")
    return tok


def build_gemma(out: Path, *, seed: int = 0) -> Path:
    import torch
    from transformers import GemmaConfig, GemmaForCausalLM

    tok = _spm_like_tokenizer(out)
    torch.manual_seed(seed)
    config = GemmaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
                         initializer_range=0.3, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    config.architectures = ["GemmaForCausalLM"]
    GemmaForCausalLM(config).eval().save_pretrained(out)
    return out


REMOTE_CODE = '''
"""Stand-ins for FlagEmbedding's layer-wise rerankers (same forward interface, toy layers)."""
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput


class ToyLayerwiseConfig(PretrainedConfig):
    model_type = "{model_type}"

    def __init__(self, vocab_size=512, hidden_size=16, num_hidden_layers=4, start_layer=2, max_position_embeddings=1024,
                 **kwargs):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.num_hidden_layers, self.start_layer = num_hidden_layers, start_layer
        self.max_position_embeddings = max_position_embeddings
        super().__init__(**kwargs)


@dataclass
class Output(ModelOutput):
    logits: tuple = None
    attention_masks: tuple = None


def causal_mean(x, mask):
    # Each position sees the mean of the real tokens up to it: causal, and blind to padding.
    m = mask.unsqueeze(-1).to(x.dtype)
    return torch.cumsum(x * m, dim=1) / torch.cumsum(m, dim=1).clamp(min=1)


def compress(x, mask, query_lengths, prompt_lengths, ratio):
    # Mean of every `ratio` passage tokens; the query and prompt are kept (rows right-padded).
    rows, masks = [], []
    for i in range(x.shape[0]):
        n = int(mask[i].sum())
        q, p = int(query_lengths[i]), int(prompt_lengths[i])
        passage = x[i, q:n - p]
        groups = [passage[j:j + ratio].mean(dim=0) for j in range(0, passage.shape[0], ratio)]
        parts = [x[i, :q]] + ([torch.stack(groups)] if groups else []) + [x[i, n - p:n]]
        rows.append(torch.cat(parts))
    width = max(r.shape[0] for r in rows)
    out = x.new_zeros((x.shape[0], width, x.shape[2]))
    new_mask = mask.new_zeros((x.shape[0], width))
    for i, r in enumerate(rows):
        out[i, :r.shape[0]] = r
        new_mask[i, :r.shape[0]] = 1
    return out, new_mask


class {class_name}(PreTrainedModel):
    config_class = ToyLayerwiseConfig

    def __init__(self, config):
        super().__init__(config)
        h = config.hidden_size
        self.embed = nn.Embedding(config.vocab_size, h)
        self.position = nn.Embedding(config.max_position_embeddings, h)
        self.layers = nn.ModuleList(nn.Linear(h, h) for _ in range(config.num_hidden_layers))
        self.heads = nn.ModuleList(nn.Linear(h, 1) for _ in range(config.start_layer, config.num_hidden_layers + 1))
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, 0.5)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.normal_(0.0, 0.5)

    def forward(self, input_ids, attention_mask=None, position_ids=None, output_hidden_states=None,
                cutoff_layers=None, compress_layer=None, compress_ratio=None, query_lengths=None,
                prompt_lengths=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        cutoff_layers = [self.config.num_hidden_layers] if cutoff_layers is None else list(cutoff_layers)
        x = self.embed(input_ids) + self.position(position_ids)
        mask, logits, masks = attention_mask, (), ()
        for index, layer in enumerate(self.layers, start=1):
            x = torch.tanh(layer(causal_mean(x, mask)))
            if {compressing} and compress_ratio not in (None, 1) and index in (compress_layer or []):
                x, mask = compress(x, mask, query_lengths, prompt_lengths, compress_ratio)
            if index in cutoff_layers:
                logits += (self.heads[index - self.config.start_layer](x).squeeze(-1),)
                masks += (mask,)
        return Output(logits=logits, attention_masks=masks)
'''


def build_remote(out: Path, *, kind: str, seed: int = 0) -> Path:
    """kind: "layerwise" (LayerWiseMiniCPMForCausalLM) or "lightweight" (CostWiseGemmaForCausalLM)."""
    import torch

    class_name = "LayerWiseMiniCPMForCausalLM" if kind == "layerwise" else "CostWiseGemmaForCausalLM"
    model_type = "minicpm" if kind == "layerwise" else "cost_wise_gemma"
    out.mkdir(parents=True, exist_ok=True)
    tok = _spm_like_tokenizer(out)
    code = REMOTE_CODE.replace("{class_name}", class_name).replace("{model_type}", model_type)
    code = code.replace("{compressing}", "True" if kind == "lightweight" else "False")
    path = out / "modeling_toy.py"
    path.write_text(code)
    name = f"toy_{kind}_{abs(hash(str(out)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    torch.manual_seed(seed)
    config = module.ToyLayerwiseConfig(vocab_size=tok.get_vocab_size(), pad_token_id=0, bos_token_id=2,
                                       eos_token_id=1)
    config.architectures = [class_name]
    config.auto_map = {"AutoConfig": "modeling_toy.ToyLayerwiseConfig",
                       "AutoModelForCausalLM": f"modeling_toy.{class_name}"}
    getattr(module, class_name)(config).eval().save_pretrained(out)
    path.write_text(code)  # save_pretrained may have copied the module over itself; keep the source
    return out
