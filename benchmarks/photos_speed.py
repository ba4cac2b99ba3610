"""Image encoding speed of the photos model against open_clip's ViT-B-32 (random weights: speed only), on the same
machine, batch 64 at each model's input size, after a warm-up batch; the median of five batches.

    python benchmarks/photos_speed.py          # needs `pip install open_clip_torch` for the comparison
"""

import json
import statistics
import time

import torch

from mmodal.loading import load_model


def images_per_second(encode, batch: torch.Tensor, repeats: int = 5) -> float:
    encode(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        encode(batch)
        times.append(time.perf_counter() - start)
    return len(batch) / statistics.median(times)


def main() -> None:
    torch.set_num_threads(2)
    report = {"threads": torch.get_num_threads()}
    photos = load_model("photos")
    pixels = torch.randint(0, 256, (64, 3, photos.input_size, photos.input_size), dtype=torch.uint8)
    frames = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(64, -1)
    report["photos_images_per_s"] = images_per_second(lambda x: photos.encode_pixels(x, frames), pixels)
    try:
        import open_clip
    except ImportError:
        report["open_clip"] = "not installed"
    else:
        clip = open_clip.create_model("ViT-B-32", pretrained=None).eval()
        batch = torch.randn(64, 3, 224, 224)
        with torch.inference_mode():
            report["open_clip_vit_b_32_images_per_s"] = images_per_second(clip.encode_image, batch)
        report["speed_up"] = report["photos_images_per_s"] / report["open_clip_vit_b_32_images_per_s"]
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in report.items()}, indent=2))


if __name__ == "__main__":
    main()
