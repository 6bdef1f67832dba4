"""What training refuses: non-finite training, rows of another model, text the tokenizer cannot encode.

Each check stops with a one-line `UserError`; the data checks run before the model loads (and before the
output folder is touched) and `force=True` (`--force`) skips them. Also here: LoRA settings stored in a
stable order, so two identical runs write byte-identical `adapter_config.json` files.
"""

from __future__ import annotations

import math

import torch

from drift_lite.errors import UserError
from drift_lite.recipe import Recipe

UNK_SHARE_LIMIT = 0.05  # above this share of unknown characters the data does not fit the model's tokenizer


class NonFiniteError(UserError):
    """Training produced a non-finite loss, gradient norm or weight."""


def finite_guard():
    """A TrainerCallback that raises NonFiniteError on a non-finite loss, gradient norm or weight."""
    from transformers import TrainerCallback

    class FiniteGuard(TrainerCallback):
        """Stops training when the loss, the gradient norm or a trainable weight is not finite."""

        def on_step_end(self, args, state, control, model=None, **kwargs):
            for name, param in model.named_parameters():
                if param.requires_grad and not bool(torch.isfinite(param.detach()).all()):
                    raise NonFiniteError(
                        f"training stopped at step {state.global_step}: weight {name} is not finite "
                        "(lower train.lr or check the data); no adapter was written"
                    )

        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "grad_norm"):
                value = (logs or {}).get(key)
                if isinstance(value, (int, float)) and not math.isfinite(value):
                    raise NonFiniteError(
                        f"training stopped at step {state.global_step}: {key} is {value} "
                        "(lower train.lr or check the data); no adapter was written"
                    )

    return FiniteGuard()


def sort_adapter_config(model) -> None:
    """Store set-valued LoRA settings (target_modules) as sorted lists: PEFT writes a set in hash order, which
    changes per process, so adapter_config.json would differ between identical runs."""
    import dataclasses

    for config in getattr(model, "peft_config", {}).values():
        for field in dataclasses.fields(config):
            value = getattr(config, field.name)
            if isinstance(value, (set, frozenset)):
                setattr(config, field.name, sorted(value))


def check_ref_model(rows: list[dict], recipe: Recipe, data_path) -> None:
    """Refuse rows whose `ref_model` is not the recipe's model: DRIFT's weights assume samples from it."""
    from drift_lite.models import same_base

    for i, row in enumerate(rows, 1):
        ref = row.get("ref_model")
        if isinstance(ref, str) and not same_base(ref, recipe.model.name):
            raise UserError(
                f"{data_path}: row {i} was sampled from ref_model {ref}, but the recipe trains "
                f"{recipe.model.name} (DRIFT's weights assume samples from the trained model); "
                "use --force to train anyway"
            )


def unknown_share(rows: list[dict], tokenizer) -> float:
    """The share of the training rows' characters the tokenizer cannot encode (unk tokens, dropped ones).

    Counted by a round trip per message: characters that come back as the unknown token, plus characters that
    do not come back at all (a tokenizer without an unk token, e.g. the toy one loaded as `Qwen2Tokenizer`,
    drops them silently). A byte-level tokenizer gives 0.
    """
    unk = tokenizer.unk_token_id
    unknown = total = 0
    for row in rows:
        if float(row["weight"]) == 0:
            continue
        for message in row["messages"]:
            text = message.get("content")
            if not isinstance(text, str) or not text:
                continue
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            back = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            unknown += (ids.count(unk) if unk is not None else 0) + max(0, len(text) - len(back))
            total += len(text)
    return unknown / total if total else 0.0


def check_unknown_share(rows: list[dict], tokenizer, model_name: str, data_path) -> None:
    """Refuse data of which more than UNK_SHARE_LIMIT of the text is unknown to the tokenizer."""
    unknown = unknown_share(rows, tokenizer)
    if unknown > UNK_SHARE_LIMIT:
        raise UserError(
            f"{data_path}: {unknown:.0%} of the text is unknown to the tokenizer of {model_name} "
            f"(over {UNK_SHARE_LIMIT:.0%}): the data does not fit this model; use --force to train anyway"
        )
