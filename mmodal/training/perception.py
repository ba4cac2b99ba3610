"""The perception stage: the slot encoder (detector and crop classifier) learning from pictures in memory, with the
scene graph transformed alongside each flip."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import gaussian_blur
from tqdm import tqdm

from mmodal.data.dataset import Dataset
from mmodal.encoders.normalize import normalize_pixels
from mmodal.encoders.pixels import PIXEL_MEAN, PIXEL_STD, letterboxed_array
from mmodal.encoders.slots import SlotEncoder, cut_crops
from mmodal.shapes.scene import Scene
from mmodal.training.slots import crop_boxes, detector_loss, detector_targets

BLUR_SHARE = 0.25  # pictures softened a little, as resampling and other renderers' edges do
BLUR_SIGMA = (0.3, 0.9)  # pixels of the letterboxed square
# Share of the crop classifier's crops whose hues are turned by a random angle. Its shape must not lean on the
# colour: trained on the colours each shape happens to come in, it reads a green circle, a pair it never saw,
# as a hexagon (0.875 of held-out objects' shapes right, against 0.995 of the others').
HUE_TURNED_SHARE = 0.75


def load_pictures(dataset: Dataset, size: int) -> tuple[list[Scene], torch.Tensor]:
    """A Shapes split's scene graphs and its pictures letterboxed to ``size``: (N, 3, size, size) uint8."""
    scenes: list[Scene] = [r.scene for r in dataset.images]
    if any(s is None for s in scenes):
        raise ValueError(f"{dataset.root} has images without scene graphs; training needs a Shapes dataset")
    images = np.zeros((len(scenes), 3, size, size), dtype=np.uint8)
    for i, record in enumerate(tqdm(dataset.images, desc="loading pictures", unit="img", leave=False)):
        with Image.open(dataset.image_path(record)) as im:
            images[i] = letterboxed_array(im, size)
    return scenes, torch.from_numpy(images)


@dataclass(frozen=True)
class PerceptionStage:
    """Detector and crop classifier, from the scene graphs of the pictures (the slot encoder alone trains)."""

    name: str = "perception"
    modules: tuple[str, ...] = ("slot_encoder.",)
    batch_size: int = 64
    lr: float = 1.5e-3
    mines: bool = False
    data_kind: str = "scenes"

    def length(self, config) -> int:
        return config.perception_steps

    def losses(
        self, model, data, size: int, mined: np.ndarray, step: int, config, rng: np.random.Generator, temperature
    ):
        pixels, scenes = data.pictures.batch(rng.choice(len(data), size=size, replace=False), rng)
        return perception_losses(model.slot_encoder, pixels.to(model.device), scenes, rng)

    def validate(self, model, config) -> dict[str, float]:
        return {}  # the detector's figures come from `mmodal eval`


class PerceptionData:
    """A training split's pictures, letterboxed to the slot encoder's source size, with their scene graphs."""

    def __init__(self, dataset: Dataset, source_size: int):
        self.scenes, self.images = load_pictures(dataset, source_size)

    def __len__(self) -> int:
        return len(self.scenes)

    def batch(self, indices: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, list[Scene]]:
        """Normalised pixels (B, 3, S, S) under a random symmetry of the square and now and then a slight blur,
        and the scenes as seen.

        Flipping or transposing the letterboxed square does the same to the picture inside it, so the scene's
        fractions follow (a transpose swaps width and height, and ``d`` is a fraction of the width).
        """
        pixels = self.images[torch.as_tensor(indices)].clone()
        scenes = []
        for i, index in enumerate(indices):
            fx, fy, swap = rng.random(3) < 0.5
            scene = self.scenes[int(index)]
            if swap:
                pixels[i] = pixels[i].transpose(-1, -2).clone()
                objects = tuple(replace(o, cx=o.cy, cy=o.cx, d=o.d * scene.width / scene.height) for o in scene.objects)
                scene = replace(scene, width=scene.height, height=scene.width, objects=objects)
            if fx:
                pixels[i] = pixels[i].flip(-1)
            if fy:
                pixels[i] = pixels[i].flip(-2)
            objects = tuple(replace(o, cx=1 - o.cx if fx else o.cx, cy=1 - o.cy if fy else o.cy) for o in scene.objects)
            scenes.append(replace(scene, objects=objects))
        normalised = normalize_pixels(pixels)
        for i in np.flatnonzero(rng.random(len(indices)) < BLUR_SHARE):
            sigma = float(rng.uniform(*BLUR_SIGMA))
            normalised[i] = gaussian_blur(normalised[i], kernel_size=3, sigma=sigma)
        return normalised, scenes


def turn_hues(pixels: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Normalised pixels (M, 3, H, W), each picture's colours turned by its angle (radians) about the grey axis:
    hues change, grey stays grey, brightness is kept; the result is clipped to what a picture can hold.

    The normalisation is the same on every channel, so turning normalised values turns the colours themselves.
    """
    if len(set(PIXEL_MEAN)) != 1 or len(set(PIXEL_STD)) != 1:
        raise ValueError("turn_hues needs the same pixel mean and spread on every channel")
    u = torch.full((3,), 3**-0.5, dtype=pixels.dtype, device=pixels.device)
    cross = torch.tensor([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], dtype=pixels.dtype, device=pixels.device) * 3**-0.5
    cos, sin = angles.cos().to(pixels.dtype)[:, None, None], angles.sin().to(pixels.dtype)[:, None, None]
    eye = torch.eye(3, dtype=pixels.dtype, device=pixels.device)
    rotations = cos * eye + sin * cross + (1 - cos) * torch.outer(u, u)  # Rodrigues' formula, (M, 3, 3)
    turned = torch.einsum("mij,mjhw->mihw", rotations, pixels)
    low, high = (0 - PIXEL_MEAN[0]) / PIXEL_STD[0], (1 - PIXEL_MEAN[0]) / PIXEL_STD[0]
    return turned.clamp(low, high)


def perception_losses(
    encoder: SlotEncoder, pixels: torch.Tensor, scenes: list[Scene], rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """Detector losses on the grid, and the crop classifier's on jittered crops around every object, most of them
    with their hues turned (the colour is learned from the others alone)."""
    config = encoder.config
    device = pixels.device
    targets = {k: v.to(device) for k, v in detector_targets(scenes, config).items()}
    losses = detector_loss(encoder.detector(pixels), targets)
    centres, sides, which = crop_boxes(scenes, config, rng)
    n = centres.shape[1]
    crops = cut_crops(pixels, centres.to(device), sides.to(device), config.crop_size)
    keep = torch.tensor([i * n + j for i, j in which], device=device)
    crops = crops[keep]
    turned = torch.from_numpy(rng.random(len(crops)) < HUE_TURNED_SHARE).to(device)
    angles = torch.from_numpy(rng.uniform(0, 2 * np.pi, len(crops))).to(device) * turned
    read = encoder.crop_classifier(turn_hues(crops, angles))
    crop_loss = 0.0
    for name in config.attributes:
        labels = torch.tensor(
            [config.attributes[name].index(getattr(scenes[i].objects[j], name)) for i, j in which], device=device
        )
        if name == "color":  # a turned crop's colour is not the scene's
            labels = labels.masked_fill(turned, -100)
        weight = 1.0 if name in config.crop_attributes else 0.25
        crop_loss = crop_loss + weight * torch.nn.functional.cross_entropy(read[name].float(), labels)
    losses["crop"] = crop_loss
    return losses
