"""The audio tower: waveform → log-mel spectrogram (torchaudio) → convolutional patches → conformer (torchaudio's)
or transformer blocks, and a CTC head that spells the time tokens as words of the tower's vocabulary (index 0 is
CTC's blank)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio
from torch import nn

from mmodal.encoders.errors import TowerInputError

SAMPLE_RATE = 16_000


@dataclass
class AudioEncoderConfig:
    """Log-mel front end and a small transformer over time patches."""

    n_mels: int = 64
    n_fft: int = 400  # 25 ms windows
    hop_length: int = 160  # 10 ms hops
    max_seconds: float = 8.0  # longer audio is refused
    width: int = 128
    num_layers: int = 2
    num_heads: int = 4
    # "conformer": attention with a convolution module in each block, as speech recognisers use; it learns words
    # several times faster than plain "transformer" blocks (BENCHMARKS.md, "conformer blocks").
    block: str = "transformer"
    conv_kernel: int = 15  # the conformer's depthwise convolution, in 40 ms tokens
    vocabulary: tuple[str, ...] = ()  # the words the CTC head transcribes; none: the tower only embeds

    @property
    def max_frames(self) -> int:
        return int(self.max_seconds * SAMPLE_RATE) // self.hop_length + 1

    @property
    def max_tokens(self) -> int:
        return (self.max_frames + 3) // 4 + 1


MIN_SECONDS = 0.1


def preprocess_audio(waveform: torch.Tensor, sample_rate: int, max_seconds: float) -> torch.Tensor:
    """Any (T,) or (channels, T) waveform → 16 kHz mono float32 (T',), checked for emptiness and length."""
    if not torch.is_tensor(waveform):
        waveform = torch.as_tensor(waveform)
    waveform = waveform.float()
    if waveform.ndim == 2:
        # soundfile gives (T, channels), torchaudio (channels, T): channels are the short side.
        waveform = waveform.mean(dim=0 if waveform.shape[0] <= waveform.shape[1] else 1)
    if waveform.ndim != 1:
        raise TowerInputError(f"audio must be a mono or multi-channel waveform, got shape {tuple(waveform.shape)}")
    if waveform.numel() == 0:
        raise TowerInputError("empty audio: nothing to encode")
    if sample_rate <= 0:
        raise TowerInputError(f"sample rate must be positive, got {sample_rate}")
    seconds = waveform.numel() / sample_rate  # checked before resampling, which an hour-long clip would make slow
    if seconds < MIN_SECONDS:  # shorter than one analysis window of the spectrogram
        raise TowerInputError(f"audio is {seconds * 1000:.0f} ms long; a spoken query needs at least {MIN_SECONDS} s")
    if seconds > max_seconds:
        raise TowerInputError(f"audio is {seconds:.1f} s long; spoken queries may last at most {max_seconds:.0f} s")
    if sample_rate != SAMPLE_RATE:
        waveform = resample(waveform, sample_rate, SAMPLE_RATE)
    if not torch.isfinite(waveform).all():
        raise TowerInputError("audio holds NaN or infinite samples")
    return waveform


def resample(waveform: torch.Tensor, rate: int, target: int) -> torch.Tensor:
    """``waveform`` (…, T) from ``rate`` to ``target`` Hz, by torchaudio's band-limited sinc interpolation."""
    if rate == target:
        return waveform
    return _resampler(rate, target)(waveform)


@functools.lru_cache(maxsize=16)
def _resampler(rate: int, target: int) -> torchaudio.transforms.Resample:
    # The filter kernel is most of the cost of resampling one clip: computed once per pair of rates.
    return torchaudio.transforms.Resample(rate, target)


class AudioEncoder(nn.Module):
    """Encodes a batch of 16 kHz waveforms into time tokens (B, T', width) with a padding mask."""

    def __init__(self, config: AudioEncoderConfig):
        super().__init__()
        self.config = config
        # Derived from the config, so not saved with the weights.
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)
        filterbank = torchaudio.functional.melscale_fbanks(
            n_freqs=config.n_fft // 2 + 1,
            f_min=0.0,
            f_max=SAMPLE_RATE / 2,
            n_mels=config.n_mels,
            sample_rate=SAMPLE_RATE,
        )
        self.register_buffer("filterbank", filterbank, persistent=False)  # (F, M)
        self.stem = nn.Sequential(
            nn.Conv1d(config.n_mels, config.width, kernel_size=3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv1d(config.width, config.width, kernel_size=3, stride=2, padding=1),
            nn.GELU(),
        )
        self.positions = nn.Parameter(torch.zeros(1, config.max_tokens, config.width))
        nn.init.normal_(self.positions, std=0.02)
        if config.block == "conformer":
            self.conformer = torchaudio.models.Conformer(
                config.width, config.num_heads, 4 * config.width, config.num_layers, config.conv_kernel, dropout=0.0
            )
        elif config.block == "transformer":
            layer = nn.TransformerEncoderLayer(
                config.width, config.num_heads, 4 * config.width, dropout=0.0, batch_first=True, norm_first=True
            )
            self.transformer = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        else:
            raise ValueError(f"unknown audio block {config.block!r}; choose conformer or transformer")
        self.norm = nn.LayerNorm(config.width)
        if config.vocabulary:
            self.word_head = nn.Linear(config.width, len(config.vocabulary) + 1)
            # log P(next word | word) over the vocabulary, with index 0 the start and end of a query: the prior
            # that beam decoding adds to the head's evidence, counted from the training transcripts.
            size = len(config.vocabulary) + 1
            self.register_buffer("word_bigram", torch.full((size, size), -float(np.log(size))))

    @property
    def transcribes(self) -> bool:
        return bool(self.config.vocabulary)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waveforms (B, T) zero-padded, lengths (B,) in samples → tokens (B, T', C), mask (B, T') of real tokens."""
        return self.encode_log_mel(self.log_mel(waveforms, lengths), lengths)

    def word_log_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Time tokens (B, T', C) → CTC log-probabilities (B, T', 1 + vocabulary), blank first."""
        return self.word_head(tokens).float().log_softmax(-1)

    def log_mel(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T) zero-padded waveforms → log-mel spectrograms (B, n_mels, frames), scaled near [-1, 1]."""
        if waveforms.ndim != 2 or waveforms.shape[0] == 0:
            raise TowerInputError(f"audio tower expects a (B, T) batch of waveforms, got {tuple(waveforms.shape)}")
        if (lengths <= 0).any():
            raise TowerInputError("empty audio in the batch: every clip needs at least one sample")
        with torch.autocast(waveforms.device.type, enabled=False):
            spectrum = (
                torch.stft(
                    waveforms.float(),
                    self.config.n_fft,
                    self.config.hop_length,
                    window=self.window,
                    return_complex=True,
                ).abs()
                ** 2
            )  # (B, F, frames)
            mel = torch.einsum("bft,fm->bmt", spectrum, self.filterbank)  # (B, M, frames)
        # Whisper's scaling: 80 dB of dynamic range below each clip's peak, mapped near [-1, 1].
        log_mel = torch.log10(mel.clamp_min(1e-10))
        log_mel = torch.maximum(log_mel, log_mel.amax(dim=(1, 2), keepdim=True) - 8.0)
        return (log_mel + 4.0) / 4.0

    def encode_log_mel(self, log_mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel spectrograms (B, n_mels, frames) of clips ``lengths`` samples long → tokens and their mask."""
        x = self.stem(log_mel).transpose(1, 2)  # (B, T', C)
        n = x.shape[1]
        if n > self.positions.shape[1]:
            raise TowerInputError(f"audio longer than the tower's {self.config.max_seconds:.0f} s limit")
        frames = lengths // self.config.hop_length + 1
        token_lengths = ((frames + 1) // 2 + 1) // 2
        mask = torch.arange(n, device=x.device)[None, :] < token_lengths[:, None]  # (B, T')
        x = x + self.positions[:, :n]
        if self.config.block == "conformer":
            # torchaudio's conformer masks by lengths and expects the batch no longer than its longest clip.
            kept = int(token_lengths.max())
            x = torch.cat([self.conformer(x[:, :kept], token_lengths)[0], x[:, kept:]], dim=1)
        else:
            x = self.transformer(x, src_key_padding_mask=~mask)
        return self.norm(x), mask
