"""The embedded default's reference policy: a tiny Qwen2 trained from a seed on scripted multi-turn chats.

The corpus is written by a noisy scripted solver of the toy tasks (`drift_lite.tasks.toy`) and replayed
through `drift_lite.env.Episode` (simple mode, no shots), so the model sees exactly the prompts, feedback and
re-formatted assistant turns the kit's rollouts produce; the loss is on assistant tokens only.

The default build (`ToyConfig()`) ships in the package (`drift_lite/data/toy/<cache key>/`, ~2 MB) so the
demo starts at once; other `toy.*` settings are built from the seed into the cache. Rebuild the shipped
folder after an edit to the corpus, solver, tokenizer or training loop: `python -m drift_lite.toy_model
--ship` (`make toy-model`).

The solver's errors are systematic by problem class, so greedy decoding (the mode) shows them too; each
decision sits on one token:
- the carry token after the tens digits ("+1" carries, "+0" drops the carry and repeats the old slip);
- the format token after `</think>` (`<answer>`, or `answer: 85` with no tags, which parses as no answer).
Greedy paths: easy problems are right at turn 1; carry problems slip at turn 1 and are right at turn 2;
stubborn problems slip without tags at turn 1 (or at the first retry), then repeat the slip to the end. Under
sampling the right path keeps real mass at turn 1 (0.25 carry, 0.12 stubborn), which fine-tuning can raise.
The prompt's fixed text is one token per phrase (`drift_lite.toy_tokenizer`): a turn's context is ~20-250
tokens, so the feedback and an earlier untagged answer are easy for the 2-layer model to attend to.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken
from tqdm.auto import tqdm

from drift_lite.env import Episode, EpisodeSettings
from drift_lite.recipe import ToyConfig
from drift_lite.tasks import toy
from drift_lite.tasks.base import Problem
from drift_lite.toy_tokenizer import (
    ADDED_TOKENS,
    PHRASE_TOKENS,
    SPECIAL_TOKENS,
    UNK,
    build_toy_tokenizer,
)

CORPUS_VERSION = "toy-corpus-3"  # bump when the solver, corpus, tokenizer or training loop changes
MAX_NEW_TOKENS = 40  # per turn; the longest scripted turn is 35 tokens (an untagged choice answer)
BUILD_INFO = "toy_build.json"
WEIGHTS = "model.safetensors"
SHIPPED_ROOT = Path(__file__).resolve().parent / "data" / "toy"  # the default build, in the package
SHIP_COMMAND = "python -m drift_lite.toy_model --ship"
# Letters that occur in no other assistant text (the prompt's words are phrase tokens), so a later turn
# sees at a glance that an earlier one dropped the tags.
BARE_PREFIX = "answer: "


@dataclass(frozen=True)
class TurnPolicy:
    """The solver's choices at one turn: carry the one, and give a bare (tagless) answer after each path."""

    p_carry: float
    p_bare_slip: float
    p_bare_right: float


# (class, context) -> policy; context is "first" (turn 1), "retry" (later, no bare answer yet) or
# "after_bare". Greedy-critical probabilities stay well away from 0.5 so the tiny model's mode is stable.
POLICY: dict[tuple[str, str], TurnPolicy] = {
    ("easy", "first"): TurnPolicy(1.0, 0.06, 0.06),
    ("easy", "retry"): TurnPolicy(1.0, 0.10, 0.10),  # unreachable: easy turns never slip
    ("easy", "after_bare"): TurnPolicy(1.0, 0.10, 0.10),
    ("carry", "first"): TurnPolicy(0.25, 0.05, 0.05),
    ("carry", "retry"): TurnPolicy(0.85, 0.75, 0.05),  # a slip at a retry drops the tags, whatever the class
    ("carry", "after_bare"): TurnPolicy(0.85, 0.10, 0.10),
    ("stubborn", "first"): TurnPolicy(0.12, 0.65, 0.05),
    ("stubborn", "retry"): TurnPolicy(0.15, 0.75, 0.10),
    ("stubborn", "after_bare"): TurnPolicy(0.15, 0.20, 0.20),
}


def turn_context(turn: int, bare_before: bool) -> str:
    """The policy context of a turn (1-based) given whether an earlier turn gave a bare answer."""
    if turn == 1:
        return "first"
    return "after_bare" if bare_before else "retry"


def solver_turn(problem: Problem, context: str, rng: random.Random) -> tuple[str, str]:
    """One scripted turn: (kind, text after the `<think>` prefill); kind is "right", "slip" or "bare"."""
    policy = POLICY[(problem.meta["class"], context)]
    a, b = problem.meta["a"], problem.meta["b"]
    carry = rng.random() < policy.p_carry
    slipped = toy.sum_value(a, b, carry) != a + b
    bare = rng.random() < (policy.p_bare_slip if slipped else policy.p_bare_right)
    think = toy.thinking(problem, carry)
    answer = toy.answer_for(problem, carry)
    if bare:  # no tags, as chat models do when they drift off format: parses as no answer
        return "bare", f"{think}</think>{BARE_PREFIX}{answer}"
    return ("slip" if slipped else "right"), f"{think}</think><answer>{answer}</answer>"


def scripted_episode(
    problem: Problem, rng: random.Random, settings: EpisodeSettings | None = None
) -> tuple[Episode, list[str]]:
    """Play the scripted solver through an Episode; returns it and the kinds the solver intended per turn."""
    episode = Episode(problem, toy.checker(), settings or EpisodeSettings())
    kinds: list[str] = []
    while not episode.done:
        kind, text = solver_turn(problem, turn_context(episode.turn + 1, "bare" in kinds), rng)
        kinds.append(kind)
        episode.step(text)
    return episode, kinds


# Multi-turn classes are oversampled: they carry more assistant tokens per prompt, and the policy learned for
# each class does not depend on how often the class occurs.
CORPUS_CLASS_MIX = {"easy": 0.30, "carry": 0.45, "stubborn": 0.25}
CORPUS_FAMILY_MIX = {"add": 0.6, "choice": 0.4}  # the letter lookup needs more examples than the sums


def corpus_problem(rng: random.Random) -> Problem:
    """A train-split problem for the corpus (`CORPUS_FAMILY_MIX`, `CORPUS_CLASS_MIX`, with replacement)."""
    family = rng.choices(toy.FAMILIES, [CORPUS_FAMILY_MIX[f] for f in toy.FAMILIES])[0]
    cls = rng.choices(toy.CLASSES, [CORPUS_CLASS_MIX[c] for c in toy.CLASSES])[0]
    a, b = rng.choice(toy._pool("train", family, cls))
    return toy.make_problem(family, a, b)


def corpus(seed: int, n: int, per_problem: int = 1) -> list[list[dict]]:
    """`n` scripted conversations (message lists as Episode writes them), deterministic in `seed`.

    Each problem gets `per_problem` conversations in a row (they share the prompt, which training runs once).
    """
    rng = random.Random(f"toy-corpus-{seed}")
    conversations: list[list[dict]] = []
    while len(conversations) < n:
        problem = corpus_problem(rng)
        for _ in range(min(per_problem, n - len(conversations))):
            conversations.append(scripted_episode(problem, rng)[0].messages)
    return conversations


def encode(tokenizer, conversations: list[list[dict]]) -> list[tuple[list[int], list[bool]]]:
    """Token ids of each conversation rendered by the chat template, and a mask of the assistant tokens.

    The mask covers each assistant turn after its `<think>` tag (the prefill, given at generation time) up
    to and including `<|im_end|>`: exactly what the model generates in a rollout.
    """
    texts = tokenizer.apply_chat_template(conversations, tokenize=False)
    ids_list = tokenizer(texts, add_special_tokens=False)["input_ids"]
    head = tokenizer("<|im_start|>assistant\n<think>", add_special_tokens=False)["input_ids"]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = []
    for ids in ids_list:
        mask = [False] * len(ids)
        for p, token in enumerate(ids):
            if token == head[0] and ids[p : p + len(head)] == head:
                start = p + len(head)
                stop = ids.index(end, start) + 1 if end in ids[start:] else len(ids)
                mask[start:stop] = [True] * (stop - start)
        out.append((ids, mask))
    return out


def _batches(examples: list, keys: list[tuple], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Index batches in a seeded order; within a span, rows sorted by `keys` then length share prompts."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    span = batch_size * 32
    batches = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: (keys[i][0], len(examples[i][0]), keys[i]))
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _common_prefix(rows: list[list[int]]) -> int:
    n = min(len(r) for r in rows)
    for k in range(n):
        if any(r[k] != rows[0][k] for r in rows):
            return k
    return n


def batch_loss(model, examples: list, idx: list[int], pad_id: int) -> torch.Tensor:
    """Mean NLL of the assistant tokens of the batch `idx` (right padding), computing each prompt once.

    The prompt part before the first assistant token runs in two levels: the part common to all rows (system
    prompt, instruction) once, then each distinct problem's part once; their keys and values are then
    gathered per row. Exact: the same tokens at the same positions give the same keys and values.
    """
    rows = [examples[i][0] for i in idx]
    # A target's logit comes from the position before it: stop one token before the first target.
    head = max(0, min(examples[i][1].index(True) for i in idx) - 1)
    common = min(_common_prefix(rows), head)
    heads: dict[tuple, int] = {}
    row_head = torch.tensor([heads.setdefault(tuple(r[common:head]), len(heads)) for r in rows])
    cache = None
    if common:
        cache = model(input_ids=torch.tensor([rows[0][:common]]), use_cache=True).cache
        for layer in cache.layers:
            layer.keys = layer.keys.expand(len(heads), -1, -1, -1)
            layer.values = layer.values.expand(len(heads), -1, -1, -1)
    if head > common:
        cache = model(input_ids=torch.tensor(list(heads)), cache=cache, use_cache=True).cache
    if cache is not None:
        for layer in cache.layers:
            layer.keys = layer.keys.index_select(0, row_head)
            layer.values = layer.values.index_select(0, row_head)
    width = max(len(r) for r in rows) - head
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), width), -100, dtype=torch.long)
    for row, i in enumerate(idx):
        tokens, mask = examples[i]
        n = len(tokens) - head
        ids[row, :n] = torch.tensor(tokens[head:])
        labels[row, :n] = torch.where(torch.tensor(mask[head:]), ids[row, :n], -100)
    # No attention mask: padding is on the right and attention is causal, so no real token sees a pad.
    logits = model(input_ids=ids, cache=cache).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    )


def _byte_char(byte: int) -> str:
    """The character a byte-level BPE (GPT-2, Qwen2) uses for `byte`."""
    kept = [*range(33, 127), *range(161, 173), *range(174, 256)]
    if byte in kept:
        return chr(byte)
    return chr(256 + [b for b in range(256) if b not in kept].index(byte))


def folder_tokenizer():
    """The toy tokenizer as the model folder stores it: a `Qwen2Tokenizer` with the same ids.

    `AutoTokenizer` loads any folder whose config is `qwen2` as `Qwen2Tokenizer`, which rebuilds a byte-level
    pre-tokenizer from the vocabulary: the plain character vocabulary of `build_toy_tokenizer()` would then
    lose spaces and newlines. Spelling them as byte-level characters (" " -> "Ġ", "\n" -> "Ċ") keeps every id,
    and the byte-level decoder gives the same text back. Characters outside the alphabet are dropped instead
    of mapped to the unknown token (the toy tasks never contain any).
    """
    from transformers import Qwen2Tokenizer

    base = build_toy_tokenizer()
    vocab = {}
    for token, i in base.backend_tokenizer.get_vocab(with_added_tokens=False).items():
        vocab[_byte_char(ord(token)) if len(token) == 1 and ord(token) < 128 else token] = i
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token=UNK,
        eos_token=base.eos_token,
        pad_token=base.pad_token,
        bos_token=None,
    )
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS], True)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS])
    tokenizer.chat_template = base.chat_template
    return tokenizer


def model_config(cfg: ToyConfig, tokenizer):
    """The Qwen2 configuration of the toy reference (same module names as Qwen2.5)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def cache_key(cfg: ToyConfig) -> str:
    """The cache folder's key: the build settings, the corpus/solver version, and what the corpus and the
    tokenizer are made of (phrases, policy, mixes), so an edit there cannot reuse a stale build."""
    corpus = {
        "phrases": PHRASE_TOKENS,
        "policy": {"/".join(k): dataclasses.astuple(p) for k, p in POLICY.items()},
        "bare": BARE_PREFIX,
        "mix": [CORPUS_CLASS_MIX, CORPUS_FAMILY_MIX],
    }
    payload = json.dumps(
        {"toy": dataclasses.asdict(cfg), "version": CORPUS_VERSION, "corpus": corpus}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def corpus_fingerprint(cfg: ToyConfig, n: int = 64) -> str:
    """sha256 of the token ids and masks of the first `n` corpus conversations for `cfg.seed`: it changes with
    the solver, the task text, the chat template or the tokenizer, even where `cache_key` does not."""
    examples = encode(folder_tokenizer(), corpus(cfg.seed, n, cfg.per_problem))
    return hashlib.sha256(json.dumps(examples, separators=(",", ":")).encode()).hexdigest()


def shipped_toy_model(cfg: ToyConfig) -> Path | None:
    """The build shipped in the package for `cfg` (the default settings only), or None."""
    folder = SHIPPED_ROOT / cache_key(cfg)
    return folder if (folder / BUILD_INFO).is_file() else None


def ensure_toy_model(cfg: ToyConfig, cache_root: Path) -> Path:
    """The folder of the toy reference model and tokenizer for `cfg`: the shipped one for the default
    settings, else cache_root/toy-<key>, built (atomically) if missing."""
    shipped = shipped_toy_model(cfg)
    if shipped is not None:
        return shipped
    final = Path(cache_root) / f"toy-{cache_key(cfg)}"
    return final if (final / BUILD_INFO).is_file() else _build_atomically(cfg, final)


def _build_atomically(cfg: ToyConfig, final: Path, clear: bool = False) -> Path:
    """Build `cfg` in a temporary sibling of `final`, then rename it into place (`clear`: first remove the
    other finished builds beside it)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build_toy_model(cfg, tmp)
        for old in final.parent.iterdir() if clear else []:
            if old.is_dir() and not old.name.startswith("."):
                shutil.rmtree(old)
        try:
            tmp.rename(final)
        except OSError:  # another process finished the same build first: keep its folder
            if not (final / BUILD_INFO).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_toy_model(cfg: ToyConfig, out_dir: Path) -> dict:
    """Train the toy reference from `cfg.seed` and save model, tokenizer and build info into `out_dir`."""
    from transformers import GenerationConfig, Qwen2ForCausalLM

    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        tokenizer = folder_tokenizer()
        conversations = corpus(cfg.seed, cfg.steps * cfg.batch_size, cfg.per_problem)
        # Sort keys: the task instruction, then the whole first user message (rows sharing it batch well).
        keys = [(c[1]["content"].split("\n", 1)[0], c[1]["content"]) for c in conversations]
        examples = encode(tokenizer, conversations)
        # exactly cfg.steps batches: the corpus has steps x batch_size conversations
        batches = _batches(examples, keys, cfg.batch_size, random.Random(f"toy-batches-{cfg.seed}"))
        data_seconds = time.perf_counter() - started

        torch.manual_seed(cfg.seed)
        model = Qwen2ForCausalLM(model_config(cfg, tokenizer))
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.98))
        ramp = max(1, len(batches) // 20)

        def lr_at(step: int) -> float:
            if step < ramp:
                return (step + 1) / ramp
            progress = (step - ramp) / max(1, len(batches) - ramp)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
        losses = []
        bar = tqdm(batches, desc="toy reference", unit="step", mininterval=2.0)
        for idx in bar:
            loss = batch_loss(model, examples, idx, tokenizer.pad_token_id)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", refresh=False)
        bar.close()
        train_seconds = time.perf_counter() - started - data_seconds

        model.eval()
        model.generation_config = GenerationConfig(
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            max_new_tokens=MAX_NEW_TOKENS,
        )
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        info = {
            "toy": dataclasses.asdict(cfg),
            "version": CORPUS_VERSION,
            "cache_key": cache_key(cfg),
            "conversations": len(examples),
            "assistant_tokens": sum(sum(m) for _, m in examples),
            "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
            "data_seconds": round(data_seconds, 2),
            "train_seconds": round(train_seconds, 2),
            "build_seconds": round(time.perf_counter() - started, 2),
            "max_new_tokens": MAX_NEW_TOKENS,
            "torch": torch.__version__,
            "corpus_sha256": corpus_fingerprint(cfg),
            "weights_sha256": hashlib.sha256((out_dir / WEIGHTS).read_bytes()).hexdigest(),
        }
        # Written last: its presence marks a complete folder.
        (out_dir / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
        return info
    finally:
        torch.set_num_threads(threads)


def ship(root: Path = SHIPPED_ROOT) -> Path:
    """Rebuild the default build into root/<cache key>, replacing the shipped build; returns the folder."""
    return _build_atomically(ToyConfig(), Path(root) / cache_key(ToyConfig()), clear=True)


def main(argv: list[str] | None = None) -> None:
    """`python -m drift_lite.toy_model --ship`: rebuild the shipped default build from its seed."""
    parser = argparse.ArgumentParser(prog="python -m drift_lite.toy_model", description=main.__doc__)
    parser.add_argument("--ship", action="store_true", required=True, help=f"rebuild {SHIPPED_ROOT}/<key>")
    info = json.loads((ship() / BUILD_INFO).read_text()) if parser.parse_args(argv).ship else {}
    print(f"{SHIPPED_ROOT}/{info['cache_key']}: weights sha256 {info['weights_sha256']}")


if __name__ == "__main__":
    main()
