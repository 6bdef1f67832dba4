"""Shared fixtures: a tiny random Qwen2 with the toy tokenizer (CPU, milliseconds)."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from drift_lite.toy_tokenizer import build_toy_tokenizer


def make_tiny_lm(seed: int = 0, hidden: int = 32, layers: int = 1):
    """A random tiny Qwen2ForCausalLM and the toy tokenizer."""
    tokenizer = build_toy_tokenizer()
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return Qwen2ForCausalLM(config).eval(), tokenizer


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One torch thread for the whole suite: the tests run tiny models, which are fastest on one thread, and
    two OpenMP threads on a 2-core box shared with other jobs wait on each other (measured: 10-50x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_lm():
    """A shared tiny random model + tokenizer (do not train it in place)."""
    return make_tiny_lm()


# The smallest whole toy run (a 10-step toy reference, 8 prompts x 2 samples, 8 eval problems): the end-to-end
# tests add their training settings to it.
TINY_TOY_RUN = [
    "toy.steps=10",
    "toy.hidden_size=32",
    "toy.threads=1",
    "task.size=8",
    "rollout.n_samples=2",
    "eval.sets=[{task: toy, size: 8}]",
]
