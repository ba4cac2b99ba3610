"""Reads COCO-style captions JSON (``captions_*.json``) into a :class:`~mmodal.data.dataset.Dataset`."""

from __future__ import annotations

import os
from pathlib import Path

from mmodal.data.dataset import CaptionRecord, Dataset, DatasetFormatError, ImageRecord
from mmodal.data.validate import field, load_json, records


def read_coco_captions(captions_json: str | os.PathLike, image_dir: str | os.PathLike) -> Dataset:
    """Reads COCO captions: ``images`` (``id``, ``file_name``) and ``annotations`` (``image_id``, ``caption``).

    Image paths in the returned dataset are relative to ``image_dir``, which becomes its root.
    """
    path, root = Path(captions_json), Path(image_dir)
    if not root.is_dir():
        raise DatasetFormatError(f"image folder {root} does not exist")
    data = load_json(path)
    dataset = Dataset(root=root, info={"source": "coco-captions", "file": str(path)})
    ids: set[str] = set()
    for i, item in enumerate(records(data, "images", path)):
        where = f"{path}: images[{i}]"
        image_id = str(field(item, "id", (int, str), where))
        file_name = field(item, "file_name", str, where)
        if image_id in ids:
            raise DatasetFormatError(f"{where}: duplicate image id {image_id}")
        if Path(file_name).is_absolute() or ".." in Path(file_name).parts:
            raise DatasetFormatError(f"{where}: file_name must be relative to the image folder, got {file_name!r}")
        if not (root / file_name).is_file():
            raise DatasetFormatError(f"{where}: image file {file_name!r} does not exist in {root}")
        ids.add(image_id)
        dataset.images.append(ImageRecord(id=image_id, file=file_name))
    for i, item in enumerate(records(data, "annotations", path)):
        where = f"{path}: annotations[{i}]"
        image_id = str(field(item, "image_id", (int, str), where))
        caption = field(item, "caption", str, where)
        if image_id not in ids:
            raise DatasetFormatError(f"{where}: image_id {image_id} is not listed under 'images'")
        if not caption.strip():
            raise DatasetFormatError(f"{where}: empty caption")
        dataset.captions.append(CaptionRecord(image_id=image_id, text=caption.strip()))
    return dataset
