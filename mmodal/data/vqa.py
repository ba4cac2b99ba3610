"""Reads VQAv2 (questions JSON + annotations JSON + an image folder) into a :class:`~mmodal.data.dataset.Dataset`."""

from __future__ import annotations

import os
import re
from pathlib import Path

from mmodal.data.dataset import Dataset, DatasetFormatError, ImageRecord, QuestionRecord
from mmodal.data.validate import field, load_json, records

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
_TRAILING_NUMBER = re.compile(r"(\d+)$")


def index_images_by_number(image_dir: Path) -> dict[int, str]:
    """Maps the number ending each image file name (``COCO_val2014_000000000042.jpg`` → 42) to the file."""
    found: dict[int, str] = {}
    for path in sorted(image_dir.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        m = _TRAILING_NUMBER.search(path.stem)
        if m:
            found.setdefault(int(m.group(1)), path.relative_to(image_dir).as_posix())
    return found


def read_vqa(
    questions_json: str | os.PathLike, annotations_json: str | os.PathLike, image_dir: str | os.PathLike
) -> Dataset:
    """Reads VQAv2 questions and annotations; each question's answer is its ``multiple_choice_answer``.

    Raises:
        DatasetFormatError: naming the file and record of anything malformed, a question without an
            annotation, or an image that is not in ``image_dir``.
    """
    qpath, apath, root = Path(questions_json), Path(annotations_json), Path(image_dir)
    if not root.is_dir():
        raise DatasetFormatError(f"image folder {root} does not exist")
    questions = records(load_json(qpath), "questions", qpath)
    annotations: dict[int, tuple[dict, str]] = {}
    for i, item in enumerate(records(load_json(apath), "annotations", apath)):
        where = f"{apath}: annotations[{i}]"
        qid = field(item, "question_id", int, where)
        field(item, "image_id", int, where)
        answer = field(item, "multiple_choice_answer", str, where)
        answers = field(item, "answers", list, where) if "answers" in item else []
        for j, a in enumerate(answers):
            if not isinstance(a, dict) or not isinstance(a.get("answer"), str):
                raise DatasetFormatError(f"{where}: answers[{j}] must be an object with a string 'answer'")
        if qid in annotations:
            raise DatasetFormatError(f"{where}: duplicate annotation for question_id {qid}")
        annotations[qid] = (item, answer)
    files = index_images_by_number(root)
    dataset = Dataset(root=root, info={"source": "vqav2", "questions": str(qpath), "annotations": str(apath)})
    image_ids: set[str] = set()
    for i, item in enumerate(questions):
        where = f"{qpath}: questions[{i}]"
        qid = field(item, "question_id", int, where)
        image_id = field(item, "image_id", int, where)
        question = field(item, "question", str, where)
        if qid not in annotations:
            raise DatasetFormatError(f"{where}: question_id {qid} has no entry in {apath}")
        annotation, answer = annotations[qid]
        if annotation["image_id"] != image_id:
            raise DatasetFormatError(
                f"{where}: image_id {image_id} disagrees with the annotation's {annotation['image_id']} in {apath}"
            )
        if image_id not in files:
            raise DatasetFormatError(f"{where}: no image numbered {image_id} in {root}")
        if str(image_id) not in image_ids:
            image_ids.add(str(image_id))
            dataset.images.append(ImageRecord(id=str(image_id), file=files[image_id]))
        dataset.questions.append(
            QuestionRecord(
                image_id=str(image_id),
                question=question,
                answer=answer,
                type=annotation.get("answer_type") if isinstance(annotation.get("answer_type"), str) else None,
                answers=[a["answer"] for a in annotation.get("answers", [])] or None,
            )
        )
    return dataset
