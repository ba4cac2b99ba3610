"""The text tokenizer: byte-level BPE built locally with the ``tokenizers`` library, saved with the model.

Byte-level BPE never meets an unknown character: words it learned become single tokens, anything
else (other scripts, typos) falls back to bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
WORD = re.compile(r"[^\W_]+")  # a word, in any script: "star-shaped" is two words, "what's" two
SPECIAL_TOKENS = (PAD, BOS, EOS)


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Trains a byte-level BPE tokenizer on ``corpus``; ids 0, 1, 2 are pad, begin and end."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(), normalizers.Strip()])
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, tokenizer.token_to_id(BOS)), (EOS, tokenizer.token_to_id(EOS))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, bos_token=BOS, eos_token=EOS)


def known_words(corpus: Iterable[str]) -> tuple[str, ...]:
    """Every word of ``corpus`` as :data:`WORD` splits them, sorted: what a model built on it records as known."""
    return tuple(sorted({w for text in corpus for w in WORD.findall(text.lower())}))
