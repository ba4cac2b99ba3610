"""Question–answer training data from disk (VQAv2 files or an mmodal dataset folder), read lazily."""

from __future__ import annotations

import numpy as np
import torch

from encoders.image import normalize_pixels
from encoders.pixels import letterbox_frame, letterboxed_array
from mmodal.data.dataset import Dataset, DatasetFormatError
from mmodal.data.images import ImageSkipped, read_image


class QuestionAnswerData:
    """Draws (pixels, questions, answers) batches; images are decoded when drawn, so any size of set fits."""

    def __init__(self, dataset: Dataset, image_size: int):
        if not dataset.questions:
            raise DatasetFormatError(f"{dataset.root} has no questions to train on")
        self.dataset, self.image_size = dataset, image_size
        images = dataset.images_by_id()
        self.pairs = [(str(dataset.image_path(images[q.image_id])), q.question, q.answer) for q in dataset.questions]

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
        """(pixels (B, 3, S, S) letterboxed and normalised, each picture's frame in its square (B, 4), questions,
        answers)."""
        picks = rng.choice(len(self.pairs), size=min(size, len(self.pairs)), replace=False)
        pixels, frames, questions, answers = [], [], [], []
        for p in picks:
            path, question, answer = self.pairs[int(p)]
            try:
                image = read_image(path, draft_size=self.image_size).image
            except ImageSkipped as skipped:
                raise DatasetFormatError(f"cannot train on {path}: {skipped.reason}") from None
            pixels.append(torch.from_numpy(letterboxed_array(image, self.image_size)))
            frames.append(letterbox_frame(image.width, image.height))
            questions.append(question)
            answers.append(answer)
        return normalize_pixels(torch.stack(pixels)), torch.tensor(frames), questions, answers
