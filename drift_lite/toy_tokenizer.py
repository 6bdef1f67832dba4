"""The embedded default's tokenizer: one token per character, except the fixed prompt text.

ChatML turns, the four tags as single tokens, and each fixed phrase of the kit's prompts (system prompt,
task instructions, format rule, feedback, role headers, the questions' fixed words) as one token: a toy
first-turn prompt of 360-427 characters is 22-46 tokens (260-327 with only the tags and ChatML markers as
single tokens), which makes the reference's build, the rollouts and training several times cheaper while the
problems' numbers and letters and the model's own text (the scratchpad) stay one token per character.
"""

from __future__ import annotations

import string

from tokenizers import AddedToken, Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from drift_lite import chat
from drift_lite.tasks import toy

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
# Matched longest-first anywhere in the text (added tokens); each is one token and decodes to itself.
PHRASE_TOKENS = [
    "system\n",
    "user\n",
    "assistant\n",
    chat.SYSTEM_PROMPT,
    chat.MATH_INSTRUCTION,
    chat.CHOICE_INSTRUCTION.format(letters="A-D"),
    "\n\nProblem:\n",
    "\n\n" + chat.FORMAT_RULE,
    chat.FEEDBACK,
    toy.ADD_ASK,
    toy.CHOICE_HEAD,
    toy.CHOICE_ASK,
]
ADDED_TOKENS = TAG_TOKENS + PHRASE_TOKENS  # non-special added tokens, in id order after the specials
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

    Written here rather than trained: a BPE model with no merges over a fixed alphabet is a character
    tokenizer, the tags and phrases are added tokens on top, and fixing both makes the vocabulary identical
    on every machine.
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + [UNK] + list(ALPHABET))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=UNK,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
