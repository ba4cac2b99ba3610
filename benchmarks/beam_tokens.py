"""How many of the head's likeliest words a beam may grow by at each frame: decoding time per clip, and the
transcripts against those of a beam that tries every word, on the clips of a spoken split.

    python benchmarks/beam_tokens.py MODEL SPOKEN_DIR [--tokens 4 8 16]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mmodal.data.audio import read_audio
from mmodal.data.dataset import read_dataset
from mmodal.encoders.transcribe import WordDecoder
from mmodal.loading import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("spoken_dir")
    parser.add_argument("--tokens", type=int, nargs="+", default=[4, 8, 16])
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a server's model worker runs
    model = load_model(args.model)
    dataset = read_dataset(args.spoken_dir)
    heads = []
    with torch.inference_mode():
        for query in (q for q in dataset.queries if q.audio):
            waves, lengths = model.preprocess_audio([read_audio(str(dataset.root / query.audio))])
            tokens, mask = model.audio_tower(waves, lengths)
            heads.append((model.audio_tower.word_log_probs(tokens), mask.sum(1)))
    vocabulary, bigram = model.config.audio.vocabulary, model.audio_tower.word_bigram

    def decode(beam_tokens):
        decoder = WordDecoder(vocabulary, bigram, beam_tokens=beam_tokens)
        started = time.perf_counter()
        transcripts = [decoder(log_probs, length)[0] for log_probs, length in heads]
        return transcripts, 1000 * (time.perf_counter() - started) / len(heads)

    every, every_ms = decode(None)
    rows = [{"beam_tokens": "all", "ms_per_clip": round(every_ms, 1), "same_transcript": len(every)}]
    for n in args.tokens:
        transcripts, ms = decode(n)
        rows.append(
            {
                "beam_tokens": n,
                "ms_per_clip": round(ms, 1),
                "same_transcript": sum(a.text == b.text for a, b in zip(every, transcripts)),
                "largest_confidence_change": round(
                    max(abs(a.confidence - b.confidence) for a, b in zip(every, transcripts)), 4
                ),
            }
        )
    print(json.dumps({"clips": len(heads), "vocabulary": len(vocabulary), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
