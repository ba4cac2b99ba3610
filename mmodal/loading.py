"""Which model a name means, and which model built an index.

Model names (``--model`` everywhere):

- ``shapes`` (the default) or ``photos``: models embedded in mmodal. ``photos`` is assembled on first use from
  the weights that two installed packages carry (EfficientNet-Lite0, MiniLM) into mmodal's model cache
  (``$MMODAL_HOME/models``, by default ``~/.cache/mmodal/models``); nothing is downloaded.
- a folder: an mmodal model folder (config.json, model.safetensors, tokenizer).
- ``clip:PATH`` or ``clip:HUB_NAME``: a Hugging Face CLIP or SigLIP model, from a folder or from the local
  Hugging Face cache.
- ``swin:PATH`` or ``swin:HUB_NAME``: a timm Swin (or any timm ImageNet classifier) checkpoint, bridged to MiniLM
  like ``photos``; the bridged model is cached beside ``photos``.

Hub names resolve only from the local cache unless ``allow_download`` is set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from mmodal.indexes.folders import recorded_model
from mmodal.model import DEFAULT_MODEL, MModalModel, resolve_model_path
from mmodal.pretrained import CONFIG_FILE, CONSE_KIND, ClipModel, ConSEConfig, ConSEModel, build_conse_model

log = logging.getLogger(__name__)

PHOTOS_MODEL = "photos"
PHOTOS_BUILD = 4  # raised whenever the photos model's assembly changes, so that it is assembled again
PREFIXES = ("clip:", "swin:")
EMBEDDED_NAMES = (DEFAULT_MODEL, PHOTOS_MODEL)


class ModelNotAvailableError(FileNotFoundError):
    """A model that is neither here nor in a local cache (and downloading was not allowed)."""


def model_home() -> Path:
    """Where mmodal keeps the models it assembles: ``$MMODAL_HOME/models`` (default ``~/.cache/mmodal``)."""
    home = os.environ.get("MMODAL_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmodal"
    return Path(home) / "models"


def load_model(name: str | None = None, device: str | torch.device = "cpu", allow_download: bool = False):
    """The model a ``--model`` value names (see the module's docstring), ready for inference."""
    name = str(name or DEFAULT_MODEL)
    if name.startswith("clip:"):
        folder = _pretrained_folder(name[len("clip:") :], allow_download)
        model = ClipModel(folder, name).to(device).eval()
    elif name.startswith("swin:"):
        folder = _pretrained_folder(name[len("swin:") :], allow_download)
        model = ConSEModel.from_pretrained(_bridged_classifier(folder, name), device)
    elif name == PHOTOS_MODEL and not Path(name).exists():
        model = ConSEModel.from_pretrained(photos_folder(), device)
    else:
        folder = resolve_model_path(name)
        if _model_kind(folder) == CONSE_KIND:
            model = ConSEModel.from_pretrained(folder, device)
        else:
            return MModalModel.from_pretrained(name, device)
    model.source = name
    return model


def index_model_name(index_dir: str | os.PathLike) -> str | None:
    """The model name an existing index records (None when there is no index yet)."""
    manifest = recorded_model(index_dir)
    return None if manifest is None else manifest.model_source or manifest.model.name


def photos_folder() -> Path:
    """The ``photos`` model's folder, assembled from the installed packages the first time."""
    folder = model_home() / f"{PHOTOS_MODEL}-{PHOTOS_BUILD}"
    if not (folder / CONFIG_FILE).is_file():
        from mmodal.encoders.imagenet import EFFICIENTNET_LITE0, efficientnet_lite0_from_package, imagenet_class_names
        from mmodal.encoders.sentence import minilm_folder

        log.info("assembling the photos model from EfficientNet-Lite0 and MiniLM into %s (once)", folder)
        config = ConSEConfig(
            name=PHOTOS_MODEL,
            architecture=EFFICIENTNET_LITE0["architecture"],
            model_args=EFFICIENTNET_LITE0["model_args"],
            class_names=imagenet_class_names(),
        )
        build_conse_model(efficientnet_lite0_from_package(), config, minilm_folder()).save_pretrained(folder)
    return folder


def _bridged_classifier(checkpoint: Path, name: str) -> Path:
    """A timm classifier checkpoint bridged to MiniLM, cached by the checkpoint's contents."""
    from mmodal.encoders.imagenet import timm_classifier_from_folder
    from mmodal.encoders.sentence import minilm_folder

    digest = hashlib.blake2b(digest_size=8)
    for part in sorted(p for p in checkpoint.iterdir() if p.is_file()):
        digest.update(part.name.encode())
        digest.update(part.read_bytes())
    folder = model_home() / f"conse-{digest.hexdigest()}"
    if not (folder / CONFIG_FILE).is_file():
        classifier, timm_config, names = timm_classifier_from_folder(checkpoint)
        image_size = int(timm_config.get("pretrained_cfg", {}).get("input_size", [3, 224, 224])[-1])
        settings = timm_config.get("pretrained_cfg", {})
        config = ConSEConfig(
            name=name,
            architecture=timm_config["architecture"],
            model_args=timm_config.get("model_args", {}),
            class_names=names,
            image_size=image_size,
            mean=tuple(settings.get("mean", (0.485, 0.456, 0.406))),
            std=tuple(settings.get("std", (0.229, 0.224, 0.225))),
        )
        log.info("bridging %s to MiniLM into %s (once)", checkpoint, folder)
        build_conse_model(classifier, config, minilm_folder()).save_pretrained(folder)
    return folder


def _pretrained_folder(name_or_path: str, allow_download: bool) -> Path:
    """A local folder, or a Hugging Face hub name found in the local cache (fetched only with ``allow_download``)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists() or name_or_path.count("/") != 1:
        raise ModelNotAvailableError(f"{name_or_path} is neither a model folder nor a Hugging Face name (owner/model)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        # The cache is looked up as the environment says now, not as it said when huggingface_hub was imported.
        cache = os.environ.get("HF_HUB_CACHE")
        return Path(snapshot_download(name_or_path, cache_dir=cache, local_files_only=not allow_download))
    except LocalEntryNotFoundError:
        raise ModelNotAvailableError(
            f"{name_or_path} is not in the local Hugging Face cache; pass --allow-download to fetch it, "
            "or give the path of a folder that holds it"
        ) from None


def _model_kind(folder: Path) -> str:
    config = folder / CONFIG_FILE
    if not config.is_file():
        return ""
    return json.loads(config.read_text(encoding="utf-8")).get("kind", "")
