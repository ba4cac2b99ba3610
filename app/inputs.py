"""The page's upload boxes: Gradio's image and audio inputs, reading what they receive with mmodal's own readers.

Gradio decodes an upload before the handler runs, and a file it cannot decode ends the request with its raw
preprocessing error (component indexes, exception names, server temp paths). These boxes read uploads the way
the CLI reads files, and refuse a bad one with the same kind of message, naming the file as the user knows it.

They are Gradio's own components with their upload step replaced, not subclasses: Gradio writes a type stub
beside the source of every component subclass when it is imported, which an installed package must not do.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
from gradio.data_classes import FileData

from mmodal.data.audio import read_audio
from mmodal.data.images import ImageSkipped, read_image


def _shown_name(payload: FileData) -> str:
    return payload.orig_name or Path(payload.path or "upload").name


def image_upload(**options) -> gr.Image:
    """An image box that passes on the uploaded file's path once mmodal can read it as a picture."""
    box = gr.Image(type="filepath", image_mode=None, **options)

    def preprocess(payload: FileData | None) -> str | None:
        if payload is None:
            return None
        try:
            # A pasted image arrives as a data URL, which Gradio writes to a file first.
            path = payload.path or gr.Image.preprocess(box, payload)
            read_image(path)
        except ImageSkipped as skipped:
            reason = skipped.reason
        except Exception as error:  # whatever Gradio's own decoding of a data URL raises
            reason = f"not an image ({type(error).__name__})"
        else:
            return path
        raise gr.Error(f"cannot use {_shown_name(payload)} as an image: {reason}", print_exception=False)

    box.preprocess = preprocess
    return box


def audio_upload(**options) -> gr.Audio:
    """An audio box that passes on the clip as (waveform, sample rate), read as `mmodal search --audio` reads it."""
    box = gr.Audio(type="filepath", **options)

    def preprocess(payload: FileData | None) -> tuple[np.ndarray, int] | None:
        if payload is None:
            return None
        if payload.path is None:
            raise gr.Error("the recording did not arrive; record or upload it again", print_exception=False)
        try:
            return read_audio(payload.path, shown_as=_shown_name(payload))
        except (ValueError, OSError) as error:
            raise gr.Error(str(error), print_exception=False) from None

    box.preprocess = preprocess
    return box


def whole_number_slider(minimum: int, maximum: int, **options) -> gr.Slider:
    """A slider whose value, from the page or the API, must be a whole number from ``minimum`` to ``maximum``."""
    box = gr.Slider(minimum, maximum, step=1, **options)
    what = (options.get("label") or "the value").lower()

    def preprocess(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value != int(value):
            raise gr.Error(f"{what} must be a whole number from {minimum} to {maximum}", print_exception=False)
        if not minimum <= value <= maximum:
            raise gr.Error(f"{what} must be from {minimum} to {maximum}, not {value:g}", print_exception=False)
        return int(value)

    box.preprocess = preprocess
    return box
