"""Tiny offline models for tests: an open_clip-native ViT CLIP and a BiomedCLIP-shaped one
(timm ViT trunk + Hugging Face BERT text tower with a `tokenizer.json` made by `tokenizers`),
both written as `local-dir:` folders with random, seeded weights."""

from __future__ import annotations

import json
from pathlib import Path

from embedstore.labels import CHEXPERT_LABELS
from embedstore.prompts import TEMPLATES

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
#: The small open_clip text transformer of the native, ResNet and timm-CNN fixtures.
TINY_TEXT_CFG = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}


def _save(folder: Path, model_cfg: dict, seed: int) -> Path:
    import open_clip
    import torch

    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}}))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}", pretrained_hf=False)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def make_native_clip(folder: Path, seed: int = 0) -> Path:
    """open_clip's own ViT (visual.transformer.resblocks) and text transformer, 48 px input, 6×6 tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    return _save(folder, {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 48, "layers": 3, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": TINY_TEXT_CFG,
    }, seed)


def make_resnet_clip(folder: Path, seed: int = 0) -> Path:
    """open_clip's ModifiedResNet image tower (a CNN: visual.layer1…layer4), 64 px input."""
    folder.mkdir(parents=True, exist_ok=True)
    return _save(folder, {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
        "text_cfg": TINY_TEXT_CFG,
    }, seed)


def make_timm_cnn_clip(folder: Path, seed: int = 0) -> Path:
    """A timm CNN trunk (ConvNeXt-atto: visual.trunk.stages) as open_clip wraps it, 64 px input."""
    folder.mkdir(parents=True, exist_ok=True)
    return _save(folder, {
        "embed_dim": 32,
        "vision_cfg": {"timm_model_name": "convnext_atto", "timm_model_pretrained": False, "timm_pool": "avg",
                       "timm_proj": "linear", "image_size": 64},
        "text_cfg": TINY_TEXT_CFG,
    }, seed)


def _vocabulary() -> list[str]:
    words = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "."}
    for text in (*CHEXPERT_LABELS, *TEMPLATES):
        words.update(text.replace("{label}", "").lower().replace(".", " ").split())
    return sorted(words)


def make_biomedclip_shaped(folder: Path, seed: int = 0) -> Path:
    """The BiomedCLIP layout: timm ViT trunk (visual.trunk.blocks), BERT text tower loaded by
    transformers from a local config, a WordPiece `tokenizer.json`; 112 px input, 7×7 tokens."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {word: i for i, word in enumerate(_vocabulary())}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 32, "pad_token": "[PAD]",
        "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]",
    }))
    BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=64).save_pretrained(folder)
    return _save(folder, {
        "embed_dim": 24,
        "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 112},
        "text_cfg": {"hf_model_name": str(folder), "hf_tokenizer_name": str(folder), "hf_proj_type": "mlp",
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 32},
    }, seed)


#: The runs of the Grad-CAM test store (tests/conftest.py: `cam_store`): mode, protocol, prompt set.
CAM_RUN_KINDS = (("zs", "study", None), ("zs", "multilabel", "posneg"), ("lp", "multilabel", None), ("ft", "study", None))


def count_hooks(module: object) -> int:
    """Forward, backward and pre-forward hooks still registered anywhere in a torch module."""
    import torch

    assert isinstance(module, torch.nn.Module)
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in module.modules())
