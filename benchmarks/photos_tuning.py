"""Tuning the photos model's bridge on photos that are not the test's: the image's top-k classes, the temperature
the classifier is read at, and the hubness correction of text searches. Ranks a tuning folder's photos (plus
synthetic distractors: Shapes scenes, noise, a gradient, a page of text, a flat colour) for 19 queries.

    mkdir -p data/tuning-photos && cd data/tuning-photos
    pip download --no-deps matplotlib==3.11.2 ultralytics==8.4.190 scipy==1.9.3 -d wheels
    unzip -j wheels/matplotlib-*.whl matplotlib/mpl-data/sample_data/grace_hopper.jpg
    unzip -j wheels/ultralytics-*.whl ultralytics/assets/bus.jpg ultralytics/assets/zidane.jpg
    unzip -j wheels/scipy-*.whl scipy/misc/face.dat     # raw bz2 pixels, turned into face.png below
    cd - && python benchmarks/photos_tuning.py data/tuning-photos
(gradio's own sample photos, cheetah, cheetah2, lion, tower and groot, are copied in by the script.)
"""

import bz2
import sys
from pathlib import Path

import gradio
import numpy as np
import torch
from PIL import Image, ImageDraw

from mmodal.encoders.pixels import letterboxed_array
from mmodal.loading import load_model
from mmodal.shapes.render import render, sample_style
from mmodal.shapes.world import sample_scene

QUERIES = {
    "a cheetah": ["cheetah.jpg", "cheetah2.jpg"],
    "a lion": ["lion.jpg"],
    "the eiffel tower": ["tower.jpg"],
    "a tree creature": ["groot.jpeg"],
    "a woman in uniform": ["grace_hopper.jpg"],
    "a bus": ["bus.jpg"],
    "two men": ["zidane.jpg"],
    "a raccoon": ["face.png"],
    "a big cat running": ["cheetah.jpg", "cheetah2.jpg"],
    "an animal resting on a rock": ["lion.jpg"],
    "a landmark in Paris": ["tower.jpg"],
    "a wooden face": ["groot.jpeg"],
    "a portrait of an old lady": ["grace_hopper.jpg"],
    "a vehicle on a street": ["bus.jpg"],
    "men wearing ties": ["zidane.jpg"],
    "a wild animal with a striped tail": ["face.png"],
    "a spotted cat": ["cheetah.jpg", "cheetah2.jpg"],
    "a tall metal structure": ["tower.jpg"],
    "a person": ["grace_hopper.jpg", "zidane.jpg", "bus.jpg"],
}


def gallery(folder: Path) -> tuple[list[str], list[Image.Image]]:
    assets = Path(gradio.__file__).parent
    for source in (
        "media_assets/images/cheetah.jpg",
        "media_assets/images/lion.jpg",
        "media_assets/images/tower.jpg",
        "media_assets/images/groot.jpeg",
        "test_data/cheetah2.jpg",
    ):
        (folder / Path(source).name).write_bytes((assets / source).read_bytes())
    if (folder / "face.dat").is_file() and not (folder / "face.png").is_file():
        raw = np.frombuffer(bz2.decompress((folder / "face.dat").read_bytes()), dtype=np.uint8)
        Image.fromarray(raw.reshape(768, 1024, 3)).save(folder / "face.png")
    names = sorted(p.name for p in folder.iterdir() if p.suffix in (".jpg", ".jpeg", ".png"))
    images = [Image.open(folder / n).convert("RGB") for n in names]
    rng = np.random.default_rng(0)
    for i in range(4):
        scene = sample_scene(rng, "train")
        images.append(render(scene, sample_style(scene, rng)).resize((256, 256)))
        names.append(f"shapes-{i}")
    images.append(Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)))
    ramp = np.linspace(0, 255, 256, dtype=np.uint8)
    planes = [np.tile(ramp, (256, 1)), np.tile(ramp[:, None], (1, 256)), np.full((256, 256), 128, np.uint8)]
    images.append(Image.fromarray(np.stack(planes, -1)))
    page = Image.new("RGB", (256, 320), "white")
    draw = ImageDraw.Draw(page)
    for y in range(10, 310, 14):
        draw.text((10, y), "lorem ipsum dolor sit amet consectetur", fill="black")
    images += [page, Image.new("RGB", (200, 200), (90, 120, 200))]
    names += ["noise", "gradient", "page", "flat"]
    return names, images


def main() -> None:
    torch.set_num_threads(2)
    names, images = gallery(Path(sys.argv[1]))
    model = load_model("photos")
    table = model.bridge.class_embeddings
    pixels = torch.from_numpy(np.stack([letterboxed_array(im, 224) for im in images]))
    with torch.inference_mode():
        logits = model.classifier((pixels.float() / 255 - 0.5) / 0.5)
        queries = model.encode_text(list(QUERIES))

    def score(top_k: int, temperature: float, hubness_weight: float) -> str:
        p, c = (logits / temperature).softmax(-1).topk(top_k, -1)
        images = torch.nn.functional.normalize(((p / p.sum(-1, keepdim=True)).unsqueeze(-1) * table[c]).sum(1), dim=-1)
        hubness = (images @ table.T).topk(50, -1).values.mean(-1)
        scores = queries @ images.T - hubness_weight * hubness
        ranks = [
            min([names[j] for j in row.argsort(descending=True).tolist()].index(g) for g in good) + 1
            for row, good in zip(scores, QUERIES.values())
        ]
        return f"{sum(r == 1 for r in ranks)}/{np.mean([1 / r for r in ranks]):.2f}"

    print(f"{len(names)} pictures, {len(QUERIES)} queries; each cell: found first / mean reciprocal rank")
    for weight in (0.0, 0.25, 0.5, 1.0):
        for temperature in (1.0, 2.0, 3.0):
            cells = " ".join(f"k{k} {score(k, temperature, weight)}" for k in (1, 3, 5, 10, 20))
            print(f"hubness {weight:<4} temperature {temperature}: {cells}")


if __name__ == "__main__":
    main()
