"""The multi-turn episode: unary feedback until the answer is right or the turns run out.

Rewards, format penalty and bookkeeping follow the release, so `Episode.to_row()` writes its rollout schema.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from drift_lite import chat
from drift_lite.tasks.base import Checker, Problem

# The release env's repetition-penalty coefficient, used here only to fill `reward_details.info
# .global_repetition_penalty` / `final_total_reward` as the release writes them (informational, for schema
# fidelity): the kit's return applies its own `weights.repeat_coef` at the weight step, so no rollout depends
# on a weighting setting.
RELEASE_REPEAT_COEF = 0.5


@dataclass(frozen=True)
class EpisodeSettings:
    """The environment's rules (release values by default)."""

    max_turns: int = 5
    format_penalty: float = -0.1
    mode: str = "simple"


@dataclass
class Episode:
    """One trajectory of one problem; feed it model outputs with `step` until `done`."""

    problem: Problem
    checker: Checker
    settings: EpisodeSettings = field(default_factory=EpisodeSettings)
    shots: list = field(default_factory=list)
    feedback_for: Callable[[str | None, str], str] | None = None  # task-specific feedback (tools)
    messages: list[dict] = field(init=False)
    verifier: dict[str, int] = field(init=False, default_factory=dict)
    answer_norms: list[str] = field(init=False, default_factory=list)
    details: dict[str, dict] = field(init=False, default_factory=dict)
    format_penalty: float = field(init=False, default=0.0)
    t_star: int | None = field(init=False, default=None)
    turn: int = field(init=False, default=0)
    _state: str = field(init=False, default="")  # the release env's observation, shown in "full" mode

    def __post_init__(self) -> None:
        s = self.settings
        self.messages = chat.initial_messages(self.problem, s.mode, s.max_turns, self.shots)
        self._state = self.problem.question

    @property
    def done(self) -> bool:
        """True after a correct answer or the last turn."""
        return self.t_star is not None or self.turn >= self.settings.max_turns

    def step(self, output: str) -> bool:
        """Score one generated turn (the text after the `<think>` prefill); returns `done`."""
        if self.done:
            raise RuntimeError("step() on a finished episode")
        self.turn += 1
        key = f"t{self.turn}"
        parsed = chat.parse_turn(output)
        self.messages.append({"role": "assistant", "content": parsed.content})
        if parsed.answer is None:
            self.verifier[key] = 0
            self.format_penalty += self.settings.format_penalty
            self.details[key] = {
                "env_reward": 0.0,
                "format_penalty": self.settings.format_penalty,
                "actions": [],
                "parsed_actions": [],
                "info": {},
            }
        else:
            self._score(key, parsed.answer)
        if not self.done:
            s = self.settings
            feedback = (
                self.feedback_for(parsed.answer, self.problem.gold) if self.feedback_for else chat.FEEDBACK
            )
            if parsed.answer is not None:
                self._state = feedback
            text = self._state if s.mode == "full" else feedback
            content = chat.feedback_message(self.turn + 1, s.mode, text, s.max_turns - len(self.answer_norms))
            self.messages.append({"role": "user", "content": content})
        return self.done

    def _score(self, key: str, answer: str) -> None:
        correct = self.checker.is_correct(answer, self.problem.gold)
        self.answer_norms.append(self.checker.normalize(answer))
        self.verifier[key] = int(correct)
        if correct:
            self.t_star = self.turn
        ratio = len(set(self.answer_norms)) / len(self.answer_norms)
        info: dict = {"action_is_valid": True, "success": correct, "per_question_unique_answers_ratio": ratio}
        if correct or len(self.answer_norms) == self.settings.max_turns:  # the release env's own "done"
            penalty = RELEASE_REPEAT_COEF * (1.0 - ratio)
            info["global_repetition_penalty"] = penalty
            info["final_total_reward"] = float(correct) - penalty
        self.details[key] = {
            "env_reward": float(correct),
            "format_penalty": 0.0,
            "actions": [answer],
            "parsed_actions": [answer],
            "info": info,
        }

    def to_row(self, **extra) -> dict:
        """The release's rollout row (all turns in `turn_rewards` / `verifier`), plus our extra fields."""
        turns = [f"t{k}" for k in range(1, self.settings.max_turns + 1)]
        return {
            "prompt_id": self.problem.id,
            "gold": self.problem.gold,
            "messages": self.messages,
            "verifier": {k: self.verifier.get(k, 0) for k in turns},
            "turn_rewards": {k: float(self.verifier.get(k, 0)) for k in turns},
            "reward_details": self.details,
            "t_star": self.t_star,
            "answer_norms": self.answer_norms,
            "format_penalty": round(self.format_penalty, 10),
            **extra,
        }
