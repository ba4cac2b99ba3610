"""Validation helpers shared by the JSON readers: every failure names the file and the record."""

from __future__ import annotations

import json
from pathlib import Path

from mmodal.data.dataset import DatasetFormatError


def load_json(path: Path) -> dict:
    """Loads a JSON object, turning every failure into a :class:`DatasetFormatError` naming the file."""
    if not path.is_file():
        raise DatasetFormatError(f"{path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"{path}: not UTF-8 text ({e})") from e
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{path}: expected a JSON object at the top, got {type(data).__name__}")
    return data


def records(data: dict, key: str, path: Path) -> list[dict]:
    """The list under ``key``, checked to hold only objects."""
    items = data.get(key)
    if not isinstance(items, list):
        raise DatasetFormatError(f"{path}: expected a list under {key!r}")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise DatasetFormatError(f"{path}: {key}[{i}] must be an object, got {type(item).__name__}")
    return items


def field(item: dict, name: str, types: type | tuple[type, ...], where: str):
    """``item[name]``, checked for presence and type."""
    if name not in item:
        raise DatasetFormatError(f"{where}: missing field {name!r}")
    value = item[name]
    if not isinstance(value, types) or isinstance(value, bool):
        expected = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise DatasetFormatError(f"{where}: field {name!r} must be {expected}, got {type(value).__name__}")
    return value
