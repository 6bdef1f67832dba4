"""The embedded default's tokenizer: one token per character, ChatML turns, the four tags as single tokens."""

from __future__ import annotations

import string

from tokenizers import AddedToken, Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
ALPHABET = string.printable[:95] + "\n"  # printable ASCII (with space) and newline; other chars map to unk
UNK = "\u2047"  # stands for any character outside the alphabet
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_toy_tokenizer() -> PreTrainedTokenizerFast:
    """A deterministic character-level tokenizer with a ChatML chat template (no training data needed).

    Written here rather than trained: a BPE model with no merges over a fixed alphabet is exactly a
    character tokenizer, and fixing the alphabet makes the vocabulary identical on every machine.
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + [UNK] + list(ALPHABET))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=UNK,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
