"""Spoken queries of a test split, searched as users' are: by the transcript's words when the model hears them
clearly (the text path, re-ranked), else by the clip's sound; beside them the same queries typed and by sound
alone, and the word error rate by noise level; over all clips and for each synthesizer that spoke them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import soundfile
import torchaudio
from tqdm import tqdm

from mmodal.data.dataset import Dataset, QueryRecord
from mmodal.model import MModalModel
from mmodal.search import Query, searchable
from mmodal.shapes.speech import heard_words

BATCH = 64

Rank = Callable[[Query], np.ndarray]
Score = Callable[[list[np.ndarray], list[QueryRecord]], dict]  # rankings, queries → {"p@10", "map", …}


def speech_metrics(
    model: MModalModel,
    dataset: Dataset,
    spoken: list[QueryRecord],
    rank: Rank,
    typed: dict[str, np.ndarray],
    score: Score,
) -> dict:
    """The figures over all ``spoken`` queries, with the same for each synthesizer under "by_synthesizer"."""
    clips = [soundfile.read(dataset.root / q.audio, dtype="float32") for q in spoken]
    sound = [rank(Query(audio=clip)) for clip in tqdm(clips, desc="search by sound", unit="query", leave=False)]
    transcripts = None
    if model.transcribes:
        batches = [clips[i : i + BATCH] for i in range(0, len(clips), BATCH)]
        progress = tqdm(batches, desc="transcribe", unit="batch", leave=False)
        transcripts = [t for batch in progress for t in model.transcribe(batch)]
    by_words = [searchable(model, t) for t in transcripts] if transcripts else [False] * len(spoken)
    spoken_rankings = [
        rank(Query(text=t.text)) if words else by_sound
        for t, words, by_sound in zip(transcripts or [None] * len(spoken), by_words, sound)
    ]

    def figures(picks: list[int]) -> dict:
        queries = [spoken[i] for i in picks]
        by_sound = score([sound[i] for i in picks], queries)
        result = {
            "n": len(picks),
            "sound": {k: by_sound[k] for k in ("p@10", "map")},
            "typed": {k: score([typed[q.text] for q in queries], queries)[k] for k in ("p@10", "map")},
        }
        if transcripts is None:
            return {**result, "p@10": by_sound["p@10"], "map": by_sound["map"]}
        heard = [transcripts[i] for i in picks]
        said = score([spoken_rankings[i] for i in picks], queries)
        return {
            **result,
            "p@10": said["p@10"],
            "map": said["map"],
            **_word_errors(queries, heard),
            "heard_share": round(float(np.mean([by_words[i] for i in picks])), 4),
            "confidence_median": round(float(np.median([t.confidence for t in heard])), 4),
        }

    groups = defaultdict(list)
    for i, query in enumerate(spoken):
        groups[(query.voice or {}).get("synthesizer", "espeak-ng")].append(i)
    return {**figures(list(range(len(spoken)))), "by_synthesizer": {k: figures(v) for k, v in sorted(groups.items())}}


def _word_errors(queries: list[QueryRecord], transcripts) -> dict:
    errors, words = defaultdict(int), defaultdict(int)
    exact = 0
    for query, transcript in zip(queries, transcripts):
        truth, heard = heard_words(query.transcript or query.text).split(), transcript.text.split()
        exact += truth == heard
        for level in ("all", noise_level(query.voice)):
            errors[level] += torchaudio.functional.edit_distance(truth, heard)
            words[level] += len(truth)
    return {
        "wer": {level: round(errors[level] / words[level], 4) for level in sorted(words)},
        "words": dict(sorted(words.items())),
        "exact_transcripts": round(exact / max(1, len(queries)), 4),
    }


def noise_level(voice: dict | None) -> str:
    snr = (voice or {}).get("snr_db")
    if snr is None:
        return "snr unknown"
    return "snr < 15 dB" if snr < 15 else "snr 15-22 dB" if snr < 22 else "snr >= 22 dB"
