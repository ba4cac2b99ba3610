"""Tiny models on random weights, saved as users' CLIP, SigLIP and timm Swin folders are, to load through the same
paths (shared by the tests of pretrained models and of the Model protocol)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

from mmodal.encoders.sentence import minilm_folder


def tiny_tokenizer(folder: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm_folder() / name, folder / name)


def tiny_dual_encoder(folder: Path, kind: str) -> None:
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    text = dict(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32)
    torch.manual_seed(0)
    if kind == "clip":
        config = CLIPConfig(
            text_config={**text, "max_position_embeddings": 32, "eos_token_id": 102, "pad_token_id": 0},
            vision_config={**vision, "patch_size": 8},
            projection_dim=16,
        )
        model = CLIPModel(config)
    else:
        config = SiglipConfig(
            text_config={**text, "max_position_embeddings": 16}, vision_config={**vision, "patch_size": 8}
        )
        model = SiglipModel(config)
    model.save_pretrained(folder)
    tiny_tokenizer(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))


def tiny_swin_classifier(folder: Path) -> dict:
    """A three-class timm Swin classifier checkpoint in ``folder``; returns its config."""
    folder.mkdir(parents=True, exist_ok=True)
    args = {"embed_dim": 16, "depths": (1, 1), "num_heads": (1, 2), "window_size": 4, "img_size": 32}
    classifier = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=3, **args)
    save_file(classifier.state_dict(), str(folder / "model.safetensors"))
    config = {
        "architecture": "swin_tiny_patch4_window7_224",
        "num_classes": 3,
        "model_args": args,
        "label_names": ["tabby cat", "espresso, coffee", "space rocket"],
        "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3},
    }
    (folder / "config.json").write_text(json.dumps(config))
    return config
