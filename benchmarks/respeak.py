"""Speak every search query of a Shapes test split again with a synthesizer that training never uses (Festival,
its "ked" diphone voice, an American English male), to measure voice search on voices of an unseen
synthesizer. Needs Festival and the voice: `apt-get install festival festvox-kdlpc16k`.

    python benchmarks/respeak.py SRC_DATASET_DIR OUT_DIR [--seed 7] [--limit N]

OUT becomes a copy of SRC in which every spoken query's WAV is replaced by Festival's reading of its text, at a
speed drawn from ±25 % and with white noise at the SNR of the original record (10–30 dB); each query's ``voice``
says so; with ``--limit N`` only the first N spoken queries keep a clip. Every other file is copied unchanged.
Score it with `python benchmarks/speech_eval.py MODEL OUT_DIR`.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio
from tqdm import tqdm

RATE = 16_000
VOICE = "ked_diphone"


def festival(text: str, stretch: float) -> np.ndarray:
    with tempfile.TemporaryDirectory() as folder:
        source, wav = Path(folder) / "query.txt", Path(folder) / "query.wav"
        source.write_text(text, encoding="utf-8")
        command = ["text2wave", "-eval", f"(voice_{VOICE})", "-eval", f"(Parameter.set 'Duration_Stretch {stretch})"]
        subprocess.run([*command, "-o", str(wav), str(source)], check=True, capture_output=True, timeout=60)
        audio, rate = soundfile.read(io.BytesIO(wav.read_bytes()), dtype="float32")
    if rate != RATE:
        audio = torchaudio.functional.resample(torch.from_numpy(audio), rate, RATE).numpy()
    return audio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src")
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--limit", type=int, help="speak only the first N spoken queries")
    args = parser.parse_args()
    if shutil.which("text2wave") is None:
        raise SystemExit("Festival is not installed: apt-get install festival festvox-kdlpc16k")
    src, out = Path(args.src), Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(src, out)
    lines = [json.loads(line) for line in (src / "queries.jsonl").read_text(encoding="utf-8").splitlines() if line]
    for number, query in enumerate(tqdm(lines, desc="festival", unit="query")):
        if not query.get("audio"):
            continue
        if args.limit is not None and number >= args.limit:
            (out / query.pop("audio")).unlink()
            query.pop("voice", None)
            continue
        rng = np.random.default_rng([args.seed, number])
        stretch = float(rng.uniform(0.8, 1.33))  # the spec's ±25 % in speed
        snr_db = float(query.get("voice", {}).get("snr_db", rng.uniform(10, 30)))
        audio = festival(query["text"], stretch)
        power = float(np.mean(audio**2)) + 1e-12
        audio = audio + rng.normal(0, np.sqrt(power / 10 ** (snr_db / 10)), audio.shape).astype(np.float32)
        soundfile.write(out / query["audio"], audio / max(1.0, float(np.abs(audio).max())), RATE, subtype="PCM_16")
        query["voice"] = {
            "voice": VOICE,
            "synthesizer": "festival",
            "words_per_minute": round(175 / stretch),
            "snr_db": round(snr_db, 2),
        }
    (out / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in lines), encoding="utf-8")


if __name__ == "__main__":
    main()
