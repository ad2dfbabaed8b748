"""Models of a known shape with seeded random weights, written as `local-dir:` folders: for tests and
benchmarks, where nothing may be downloaded. `write_biomedclip_shaped` writes BiomedCLIP's layout
(timm ViT trunk, Hugging Face BERT text tower from a `BertConfig`, WordPiece `tokenizer.json`) at any
size; `write_random_weights` saves the weights of any folder's `open_clip_config.json`."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: open_clip's default normalisation, written into every config here.
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class BiomedShape:
    """Sizes of a BiomedCLIP-shaped model: timm ViT trunk, BERT text tower, WordPiece vocabulary
    (`vocab_size` 0: only the words of the label names and prompt templates)."""

    timm_model: str
    image_size: int
    embed_dim: int
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    context_length: int


#: microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224: ViT-B/16 at 224 px, 512-d, PubMedBERT-base, 256 tokens.
BIOMEDCLIP_SHAPE = BiomedShape("vit_base_patch16_224", 224, 512, 30522, 768, 12, 12, 3072, 256)
#: The same layout tiny (timm's 6-block `test_vit`, 112 px: 7 × 7 tokens), for tests and --smoke runs.
TINY_BIOMEDCLIP_SHAPE = BiomedShape("test_vit", 112, 24, 0, 32, 2, 2, 64, 32)


def write_config(folder: Path, model_cfg: dict[str, Any]) -> None:
    """An open_clip_config.json for `model_cfg` with open_clip's default normalisation."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}}))


def write_random_weights(folder: Path, seed: int) -> str:
    """Create the `local-dir:` model of `folder`'s open_clip_config.json with seeded random weights and
    save them beside it (under embedstore's network guard; a Hugging Face text tower is built from its
    config, not fetched). Returns the model id."""
    import open_clip
    import torch

    from embedstore.models import offline

    logging.disable(logging.WARNING)  # open_clip warns that the folder has no weights yet: they are made here
    try:
        with offline(), torch.random.fork_rng():
            torch.manual_seed(seed)
            model = open_clip.create_model(f"local-dir:{folder}", pretrained_hf=False)
    finally:
        logging.disable(logging.NOTSET)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return f"local-dir:{folder}"


def write_biomedclip_shaped(folder: Path, shape: BiomedShape, seed: int) -> str:
    """BiomedCLIP's layout as a `local-dir:` model with seeded random weights: its open_clip config
    (timm trunk, `hf_model_name` = this folder), the text tower's BertConfig, and a WordPiece
    tokenizer.json (the prompts' words, then `[unusedN]` up to the vocabulary size). Returns the model id."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig

    from embedstore.labels import CHEXPERT_LABELS
    from embedstore.prompts import TEMPLATES

    folder.mkdir(parents=True, exist_ok=True)
    words = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "."}
    for text in (*CHEXPERT_LABELS, *TEMPLATES):
        words.update(text.replace("{label}", "").lower().replace(".", " ").split())
    listed = sorted(words)
    vocab = {word: i for i, word in enumerate(listed + [f"[unused{i}]" for i in range(shape.vocab_size - len(listed))])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": shape.context_length, "pad_token": "[PAD]",
        "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]",
    }))
    BertConfig(vocab_size=len(vocab), hidden_size=shape.hidden, num_hidden_layers=shape.layers,
               num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
               max_position_embeddings=2 * shape.context_length).save_pretrained(folder)
    write_config(folder, {
        "embed_dim": shape.embed_dim,
        "vision_cfg": {"timm_model_name": shape.timm_model, "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": shape.image_size},
        "text_cfg": {"hf_model_name": str(folder), "hf_tokenizer_name": str(folder), "hf_proj_type": "mlp",
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": shape.context_length}})
    return write_random_weights(folder, seed)
