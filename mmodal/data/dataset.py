"""The on-disk dataset format (a folder of images plus JSONL files): records, a validating reader, a writer.

See docs/dataset-format.md for the format. Every malformed record raises :class:`DatasetFormatError`
naming the file and line.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmodal.indexes.atomic import write_json, write_jsonl
from mmodal.shapes.scene import Scene, SpecError

FORMAT_NAME = "mmodal-dataset"
FORMAT_VERSION = 1
INFO_FILE = "dataset.json"
IMAGES_FILE = "images.jsonl"
CAPTIONS_FILE = "captions.jsonl"
FOILS_FILE = "foils.jsonl"
QUESTIONS_FILE = "questions.jsonl"
QUERIES_FILE = "queries.jsonl"


class DatasetFormatError(ValueError):
    """A dataset file or record that does not follow the documented format."""


@dataclass
class ImageRecord:
    """One image: ``file`` is relative to the dataset folder; ``scene`` is set for Shapes data."""

    id: str
    file: str
    scene: Scene | None = None
    render: dict | None = None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"id": self.id, "file": self.file}
        if self.scene is not None:
            out["scene"] = self.scene.to_dict()
        if self.render is not None:
            out["render"] = self.render
        return out


@dataclass
class CaptionRecord:
    """A text that describes the whole image."""

    image_id: str
    text: str
    kind: str | None = None


@dataclass
class FoilRecord:
    """A true caption and a minimally changed false one."""

    image_id: str
    caption: str
    foil: str
    kind: str


@dataclass
class QuestionRecord:
    """A question about one image, its answer and, for VQAv2 data, every annotator's answer."""

    image_id: str
    question: str
    answer: str
    type: str | None = None
    answers: list[str] | None = None


@dataclass
class QueryRecord:
    """A search query, the ids of every relevant image and, optionally, a spoken version."""

    id: str
    text: str
    relevant: list[str]
    kind: str | None = None
    audio: str | None = None
    voice: dict | None = None
    transcript: str | None = None  # what the audio says, when it words the query another way than ``text``


@dataclass
class Dataset:
    """A whole dataset folder, read and validated."""

    root: Path
    info: dict = field(default_factory=dict)
    images: list[ImageRecord] = field(default_factory=list)
    captions: list[CaptionRecord] = field(default_factory=list)
    foils: list[FoilRecord] = field(default_factory=list)
    questions: list[QuestionRecord] = field(default_factory=list)
    queries: list[QueryRecord] = field(default_factory=list)

    def image_path(self, record: ImageRecord) -> Path:
        return self.root / record.file

    def images_by_id(self) -> dict[str, ImageRecord]:
        return {r.id: r for r in self.images}


# ------------------------------------------------------------------------------------------------ reading

_SCHEMAS: dict[type, dict[str, tuple[type, ...]]] = {
    CaptionRecord: {"image_id": (str,), "text": (str,), "kind": (str, type(None))},
    FoilRecord: {"image_id": (str,), "caption": (str,), "foil": (str,), "kind": (str,)},
    QuestionRecord: {
        "image_id": (str,),
        "question": (str,),
        "answer": (str,),
        "type": (str, type(None)),
        "answers": (list, type(None)),
    },
    QueryRecord: {
        "id": (str,),
        "text": (str,),
        "relevant": (list,),
        "kind": (str, type(None)),
        "audio": (str, type(None)),
        "voice": (dict, type(None)),
        "transcript": (str, type(None)),
    },
}
_OPTIONAL = {"kind", "type", "answers", "audio", "voice", "transcript"}


def _iter_jsonl(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetFormatError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
                if not isinstance(data, dict):
                    raise DatasetFormatError(f"{path}:{lineno}: expected a JSON object, got {type(data).__name__}")
                yield lineno, data
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"{path}: not UTF-8 text ({e})") from e


def _build(cls: type, data: dict, where: str):
    schema = _SCHEMAS[cls]
    unknown = set(data) - set(schema)
    if unknown:
        raise DatasetFormatError(f"{where}: unknown field(s) {sorted(unknown)}; expected {sorted(schema)}")
    for name, types in schema.items():
        if name not in data:
            if name in _OPTIONAL:
                continue
            raise DatasetFormatError(f"{where}: missing field {name!r}")
        if not isinstance(data[name], types):
            expected = " or ".join(t.__name__ for t in types)
            raise DatasetFormatError(f"{where}: field {name!r} must be {expected}, got {type(data[name]).__name__}")
    return cls(**data)


def _read_images(root: Path) -> list[ImageRecord]:
    path = root / IMAGES_FILE
    if not path.is_file():
        raise DatasetFormatError(
            f"{root} is not a dataset folder: {IMAGES_FILE} is missing (see docs/dataset-format.md)"
        )
    records, seen = [], set()
    for lineno, data in _iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(data.get("id"), str) or not isinstance(data.get("file"), str):
            raise DatasetFormatError(f"{where}: an image record needs string fields 'id' and 'file'")
        if data["id"] in seen:
            raise DatasetFormatError(f"{where}: duplicate image id {data['id']!r}")
        seen.add(data["id"])
        file = Path(data["file"])
        if file.is_absolute() or ".." in file.parts:
            raise DatasetFormatError(f"{where}: 'file' must be a path inside the dataset folder, got {data['file']!r}")
        if not (root / file).is_file():
            raise DatasetFormatError(f"{where}: image file {data['file']!r} does not exist under {root}")
        scene = None
        if "scene" in data:
            try:
                scene = Scene.from_dict(data["scene"])
            except SpecError as e:
                raise DatasetFormatError(f"{where}: {e}") from e
        records.append(ImageRecord(id=data["id"], file=data["file"], scene=scene, render=data.get("render")))
    return records


def read_dataset(root: str | os.PathLike) -> Dataset:
    """Reads and validates a dataset folder; raises :class:`DatasetFormatError` naming file and line."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetFormatError(f"dataset folder {root} does not exist")
    info: dict = {}
    if (root / INFO_FILE).is_file():
        try:
            info = json.loads((root / INFO_FILE).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetFormatError(f"{root / INFO_FILE}: not valid JSON ({e})") from e
        if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
            raise DatasetFormatError(f'{root / INFO_FILE}: expected an object with "format": "{FORMAT_NAME}"')
        if info.get("version") != FORMAT_VERSION:
            raise DatasetFormatError(
                f"{root / INFO_FILE}: format version {info.get('version')!r} is not supported; "
                f"this mmodal reads version {FORMAT_VERSION}"
            )
    dataset = Dataset(root=root, info=info, images=_read_images(root))
    ids = {r.id for r in dataset.images}
    for name, cls, target in (
        (CAPTIONS_FILE, CaptionRecord, dataset.captions),
        (FOILS_FILE, FoilRecord, dataset.foils),
        (QUESTIONS_FILE, QuestionRecord, dataset.questions),
        (QUERIES_FILE, QueryRecord, dataset.queries),
    ):
        path = root / name
        if not path.is_file():
            continue
        for lineno, data in _iter_jsonl(path):
            where = f"{path}:{lineno}"
            record = _build(cls, data, where)
            _check_references(record, ids, root, where)
            target.append(record)
    return dataset


def _check_references(record, ids: set[str], root: Path, where: str) -> None:
    if isinstance(record, QueryRecord):
        missing = [i for i in record.relevant if not isinstance(i, str) or i not in ids]
        if missing:
            raise DatasetFormatError(f"{where}: relevant image id(s) {missing[:5]} are not in {IMAGES_FILE}")
        if record.audio is not None and not (root / record.audio).is_file():
            raise DatasetFormatError(f"{where}: audio file {record.audio!r} does not exist under {root}")
    elif record.image_id not in ids:
        raise DatasetFormatError(f"{where}: image_id {record.image_id!r} is not in {IMAGES_FILE}")


# ------------------------------------------------------------------------------------------------ writing


def _plain(record) -> dict:
    return {k: v for k, v in asdict(record).items() if v is not None}


def write_dataset(dataset: Dataset) -> None:
    """Writes every JSONL file atomically, then ``dataset.json`` last, which marks the folder complete."""
    root = dataset.root
    write_jsonl(root / IMAGES_FILE, (r.to_dict() for r in dataset.images))
    for name, records in (
        (CAPTIONS_FILE, dataset.captions),
        (FOILS_FILE, dataset.foils),
        (QUESTIONS_FILE, dataset.questions),
        (QUERIES_FILE, dataset.queries),
    ):
        write_jsonl(root / name, (_plain(r) for r in records))
    write_json(root / INFO_FILE, {"format": FORMAT_NAME, "version": FORMAT_VERSION, **dataset.info})
