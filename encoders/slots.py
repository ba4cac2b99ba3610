"""Object slots: a Swin detector with dense heads on a grid, decoded into at most N objects, and a second
Swin stage that reads each object from a crop of the full-resolution picture.

A slot is one row of floats (see :class:`SlotLayout`): presence, attribute probabilities and the object's
centre and diameter as fractions of the original picture (the letterbox undone), as the Shapes spec
defines positions. The attribute vocabularies come from the config, so this module knows no world.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer
from torch import nn
from torchvision.ops import roi_align

from mmodal.encoders.errors import TowerInputError


@dataclass
class SlotConfig:
    """The detector, the crop classifier and the attribute vocabularies they read."""

    attributes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name → values, e.g. color → (red, …)
    crop_attributes: tuple[str, ...] = ("shape",)  # attributes the crop stage decides (the grid decides the rest)
    max_slots: int = 6  # objects kept per image
    min_presence: float = 0.2  # detections below this objectness are dropped
    source_size: int = 128  # the picture is letterboxed to this square; crops are cut from it
    patch_size: int = 8  # detector input patch: the first stage's grid is source_size / patch_size
    embed_dim: int = 48
    depths: tuple[int, ...] = (2, 2)
    num_heads: tuple[int, ...] = (3, 6)
    window_size: int = 4
    crop_size: int = 32  # side of the crop the second stage reads
    crop_context: float = 1.5  # crop side over the detected diameter
    crop_embed_dim: int = 48
    crop_depths: tuple[int, ...] = (2, 2)
    crop_num_heads: tuple[int, ...] = (3, 6)

    @property
    def grid(self) -> int:
        """Side of the detection grid (the first stage's tokens)."""
        return self.source_size // self.patch_size


@dataclass(frozen=True)
class SlotLayout:
    """Column ranges of one slot row: presence, each attribute's probabilities, then cx, cy, d."""

    attributes: dict[str, tuple[str, ...]]

    @property
    def width(self) -> int:
        return 1 + sum(len(v) for v in self.attributes.values()) + 3

    def span(self, name: str) -> slice:
        start = 1
        for key, values in self.attributes.items():
            if key == name:
                return slice(start, start + len(values))
            start += len(values)
        raise KeyError(f"no attribute {name!r}; slots hold {list(self.attributes)}")

    @property
    def position(self) -> slice:
        return slice(self.width - 3, self.width)

    def pack(
        self, presence: torch.Tensor, probabilities: dict[str, torch.Tensor], position: torch.Tensor
    ) -> torch.Tensor:
        """(…,) presence, (…, V) per attribute, (…, 3) cx cy d → (…, width) slot rows."""
        parts = [presence.unsqueeze(-1)] + [probabilities[k] for k in self.attributes] + [position]
        return torch.cat(parts, dim=-1)


def _swin(image_size, patch_size, embed_dim, depths, num_heads, window_size) -> SwinTransformer:
    return SwinTransformer(
        img_size=image_size,
        patch_size=patch_size,
        in_chans=3,
        num_classes=0,
        global_pool="",
        embed_dim=embed_dim,
        depths=tuple(depths),
        num_heads=tuple(num_heads),
        window_size=window_size,
    )


class SlotDetector(nn.Module):
    """Dense heads on the detection grid: objectness, each attribute, centre offset in the cell, log diameter."""

    def __init__(self, config: SlotConfig):
        super().__init__()
        self.config = config
        c = config
        self.backbone = _swin(c.source_size, c.patch_size, c.embed_dim, c.depths, c.num_heads, c.window_size)
        # The heads read every stage before the final norm, which timm then drops: no weight goes unused.
        self.backbone.prune_intermediate_layers(len(c.depths), prune_norm=True)
        widths = [c.embed_dim * 2**i for i in range(len(c.depths))]
        self.lateral = nn.ModuleList(nn.Conv2d(w, widths[0], 1) for w in widths)
        self.neck = nn.Sequential(nn.Conv2d(widths[0], widths[0], 3, padding=1), nn.GELU())
        self.heads = nn.ModuleDict({k: nn.Conv2d(widths[0], len(v), 1) for k, v in c.attributes.items()})
        self.objectness = nn.Conv2d(widths[0], 1, 1)
        self.box = nn.Conv2d(widths[0], 3, 1)  # x, y offset in the cell (sigmoid), log diameter

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, S, S) normalised → per-cell logits: objectness (B, G, G), attribute (B, V, G, G), box (B, 3, G, G)."""
        stages = self.backbone.forward_intermediates(pixels, intermediates_only=True)  # [(B, C_i, G_i, G_i)]
        grid = stages[0].shape[-1]
        features = sum(F.interpolate(lat(s), size=(grid, grid), mode="nearest") for lat, s in zip(self.lateral, stages))
        features = self.neck(features)  # (B, C, G, G)
        out = {k: head(features) for k, head in self.heads.items()}
        out["objectness"] = self.objectness(features).squeeze(1)
        out["box"] = self.box(features)
        return out


class CropClassifier(nn.Module):
    """Reads one object from a crop of the picture around its detection: per-attribute logits."""

    def __init__(self, config: SlotConfig):
        super().__init__()
        c = config
        self.backbone = _swin(c.crop_size, 4, c.crop_embed_dim, c.crop_depths, c.crop_num_heads, 4)
        width = c.crop_embed_dim * 2 ** (len(c.crop_depths) - 1)
        self.norm = nn.LayerNorm(width)
        self.heads = nn.ModuleDict({k: nn.Linear(width, len(v)) for k, v in c.attributes.items()})

    def forward(self, crops: torch.Tensor) -> dict[str, torch.Tensor]:
        """(M, 3, c, c) → {attribute: (M, V)}."""
        if crops.shape[0] == 0:
            return {k: crops.new_zeros(0, h.out_features) for k, h in self.heads.items()}
        pooled = self.norm(self.backbone.forward_features(crops).mean(dim=(1, 2)))  # (M, C)
        return {k: head(pooled) for k, head in self.heads.items()}


def cut_crops(source: torch.Tensor, centres: torch.Tensor, sides: torch.Tensor, size: int) -> torch.Tensor:
    """Square crops of the letterboxed pictures, resampled to ``size``.

    source (B, 3, S, S); centres (B, N, 2) and sides (B, N) as fractions of S → (B*N, 3, size, size).
    """
    b, n = sides.shape
    s = source.shape[-1]
    half = (sides * s / 2).unsqueeze(-1)  # (B, N, 1)
    centre = centres * s
    boxes = torch.cat([centre - half, centre + half], dim=-1).reshape(b * n, 4)  # x1 y1 x2 y2
    batch_index = torch.arange(b, device=source.device).repeat_interleave(n).to(boxes.dtype).unsqueeze(1)
    rois = torch.cat([batch_index, boxes], dim=1)
    return roi_align(source, rois, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)


class SlotEncoder(nn.Module):
    """Pictures → object slots: detect on the grid, keep local maxima, read each object from its crop."""

    def __init__(self, config: SlotConfig):
        super().__init__()
        if not config.attributes:
            raise ValueError("SlotConfig.attributes is empty: name the attributes and their values")
        self.config = config
        self.layout = SlotLayout(config.attributes)
        self.detector = SlotDetector(config)
        self.crop_classifier = CropClassifier(config)

    def check_pixels(self, pixels: torch.Tensor) -> None:
        size = self.config.source_size
        if pixels.ndim != 4 or pixels.shape[1:] != (3, size, size) or pixels.shape[0] == 0:
            raise TowerInputError(
                f"the slot encoder expects pixels of shape (B, 3, {size}, {size}), got {tuple(pixels.shape)}"
            )

    def forward(self, pixels: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, S, S) normalised; frames (B, 4) = (x0, y0, w, h) of each picture in its square
        (see ``mmodal.encoders.pixels.letterbox_frame``) → slots (B, N, layout.width), absent slots all zero."""
        self.check_pixels(pixels)
        c = self.config
        detections = decode_detections(self.detector(pixels), c)
        probabilities = detections.probabilities
        if c.crop_attributes:
            centres = torch.stack([detections.x, detections.y], -1)
            crops = cut_crops(pixels, centres, detections.side * c.crop_context, c.crop_size)
            read = self.crop_classifier(crops)
            for k in c.crop_attributes:
                probabilities[k] = read[k].float().softmax(-1).view(len(pixels), -1, len(c.attributes[k]))
        return detections.to_slots(self.layout, frames)


@dataclass
class Detections:
    """Up to N objects per image, in the letterboxed square: presence 0 marks an empty row."""

    presence: torch.Tensor  # (B, N)
    x: torch.Tensor  # (B, N) centre, fraction of the square
    y: torch.Tensor  # (B, N)
    side: torch.Tensor  # (B, N) diameter, fraction of the square
    probabilities: dict[str, torch.Tensor]  # attribute → (B, N, V)

    def to_slots(self, layout: SlotLayout, frames: torch.Tensor) -> torch.Tensor:
        """Slot rows (B, N, F) with positions as fractions of each original picture (the letterbox undone)."""
        x0, y0, w, h = (f[:, None] for f in frames.to(self.x.dtype).unbind(-1))
        position = torch.stack([(self.x - x0) / w, (self.y - y0) / h, self.side / w], -1)
        slots = layout.pack(self.presence, self.probabilities, position)
        return slots * (self.presence > 0).unsqueeze(-1).to(slots.dtype)


def decode_detections(out: dict[str, torch.Tensor], config: SlotConfig) -> Detections:
    """Dense head logits → the N most confident local maxima of objectness (3×3 non-maximum suppression)."""
    probability = torch.sigmoid(out["objectness"].float())  # (B, G, G)
    g = probability.shape[-1]
    peaks = probability == F.max_pool2d(probability.unsqueeze(1), 3, 1, 1).squeeze(1)
    score = torch.where(peaks & (probability >= config.min_presence), probability, torch.zeros_like(probability))
    presence, cells = score.flatten(1).topk(min(config.max_slots, g * g), dim=1)  # (B, N)
    rows, cols = cells // g, cells % g

    def at_cells(t: torch.Tensor) -> torch.Tensor:  # (B, V, G, G) → (B, N, V)
        flat = t.float().flatten(2)
        return flat.gather(2, cells.unsqueeze(1).expand(-1, flat.shape[1], -1)).transpose(1, 2)

    box = at_cells(out["box"])  # (B, N, 3)
    return Detections(
        presence=presence,
        x=(cols + torch.sigmoid(box[..., 0])) / g,
        y=(rows + torch.sigmoid(box[..., 1])) / g,
        side=box[..., 2].exp().clamp(1e-3, 1.5),
        probabilities={k: at_cells(out[k]).softmax(-1) for k in config.attributes},
    )
