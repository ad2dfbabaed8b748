"""Tiny offline models for tests: an open_clip-native ViT CLIP and a BiomedCLIP-shaped one
(timm ViT trunk + Hugging Face BERT text tower with a `tokenizer.json` made by `tokenizers`),
both written as `local-dir:` folders with random, seeded weights."""

from __future__ import annotations

from pathlib import Path

from embedstore.shaped_models import write_config, write_random_weights

#: The small open_clip text transformer of the native, ResNet and timm-CNN fixtures.
TINY_TEXT_CFG = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}


def _save(folder: Path, model_cfg: dict, seed: int) -> Path:
    write_config(folder, model_cfg)
    write_random_weights(folder, seed)
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


def make_biomedclip_shaped(folder: Path, seed: int = 0) -> Path:
    """The BiomedCLIP layout: timm ViT trunk (visual.trunk.blocks), BERT text tower loaded by
    transformers from a local config, a WordPiece `tokenizer.json`; 112 px input, 7×7 tokens."""
    from embedstore.shaped_models import TINY_BIOMEDCLIP_SHAPE, write_biomedclip_shaped

    write_biomedclip_shaped(folder, TINY_BIOMEDCLIP_SHAPE, seed)
    return folder


#: The runs of the Grad-CAM test store (tests/conftest.py: `cam_store`): mode, protocol, prompt set.
CAM_RUN_KINDS = (("zs", "study", None), ("zs", "multilabel", "posneg"), ("lp", "multilabel", None), ("ft", "study", None))


def count_hooks(module: object) -> int:
    """Forward, backward and pre-forward hooks still registered anywhere in a torch module."""
    import torch

    assert isinstance(module, torch.nn.Module)
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in module.modules())
