"""One training step of the default model on the GPU, with the Triton kernels and with the torch references
(MMODAL_KERNELS=torch), as `mmodal train` runs it: the reading stage (language core, readers, answers, pooler),
bf16 autocast, AdamW.

    python benchmarks/kernels_training_step.py [--batch-size 128] [--steps 20]    # needs CUDA; prints JSON

A Shapes training split is generated in a temporary folder; each setting runs warm-up steps, then the median
step time of ``--steps`` steps (synchronised) and the peak memory are reported.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    from mmodal.data.dataset import read_dataset
    from mmodal.data.generate import generate_shapes
    from mmodal.training.config import TrainConfig
    from mmodal.training.reading import ReadingStage
    from mmodal.training.slot_batches import SlotTrainingData, freeze_towers
    from mmodal.training.stages import build_model
    from mmodal.training.temperature import Temperature

    report = {"device": torch.cuda.get_device_name(), "batch_size": args.batch_size, "settings": {}}
    with tempfile.TemporaryDirectory() as tmp:
        generate_shapes(Path(tmp) / "train", n=1024, seed=0, split="train", workers=os.cpu_count() or 1)
        dataset = read_dataset(Path(tmp) / "train")
        config = TrainConfig(out=tmp, data=str(Path(tmp) / "train"), speech_steps=0)
        stage = ReadingStage(seen=False)
        for setting in ("torch", "auto"):
            os.environ["MMODAL_KERNELS"] = setting
            torch.manual_seed(0)
            model = build_model(config, None).cuda().train()
            data = SlotTrainingData(dataset, model.input_size)
            temperature = Temperature().cuda()
            optimizer = torch.optim.AdamW([*freeze_towers(model, stage.modules), temperature.log_scale], lr=1e-4)
            rng = np.random.default_rng(0)
            torch.cuda.reset_peak_memory_stats()
            times = []
            for step in range(args.steps + 3):
                torch.cuda.synchronize()
                start = time.perf_counter()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    mined = np.zeros(0, np.int64)
                    total = sum(
                        stage.losses(model, data, args.batch_size, mined, step, config, rng, temperature).values()
                    )
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                torch.cuda.synchronize()
                if step >= 3:
                    times.append(time.perf_counter() - start)
            report["settings"]["triton kernels" if setting == "auto" else "torch references"] = {
                "step_ms": round(1000 * statistics.median(times), 2),
                "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            }
    settings = report["settings"]
    report["speed_up"] = round(settings["torch references"]["step_ms"] / settings["triton kernels"]["step_ms"], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
