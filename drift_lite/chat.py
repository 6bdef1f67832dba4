"""The release's prompts, rendering with a chat template, and parsing `<think>…</think><answer>…</answer>`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from drift_lite.tasks.base import Problem

SYSTEM_PROMPT = "You're a helpful assistant. "
FEEDBACK = "Incorrect. Please think again."
THINK_PREFILL = "<think>"
MATH_INSTRUCTION = "You are solving Math problems. Only give the final answer between <answer> and </answer>."
CHOICE_INSTRUCTION = (
    "You are solving multiple-choice questions. Only give the final answer letter ({letters}) "
    "between <answer> and </answer>."
)
TOOLS_INSTRUCTION = (
    "You are calling tools. Only give the final tool call, as tool_name(param=value, ...), "
    "between <answer> and </answer>."
)
FORMAT_RULE = (
    "Always output: <think> [Your thoughts] </think> <answer> [your answer] </answer> with no extra text. "
    "Strictly follow this format."
)
FULL_LENGTH_RULE = " Max response length: {max_words} words (tokens).\n"
ANSWER_SEPARATOR = "||"
_TURN_RE = re.compile(r"<think>(.*?)</think>\s*<answer>(.*?)</answer>", re.DOTALL)


def instruction_for(problem: Problem) -> str:
    """The task instruction the release puts before the problem, by task family."""
    if problem.family == "choice":
        return CHOICE_INSTRUCTION.format(letters=problem.meta.get("letters", "A-D"))
    if problem.family == "tools":
        return TOOLS_INSTRUCTION
    return MATH_INSTRUCTION


def first_user_message(
    problem: Problem, mode: str = "simple", max_turns: int = 5, max_words: int = 400
) -> str:
    """The first user turn: "simple" (the release's evaluation format) or "full" (its rollout format)."""
    instruction = instruction_for(problem)
    if mode == "simple":
        return f"{instruction}\n\nProblem:\n{problem.question}\n\n{FORMAT_RULE}"
    return _full_block(instruction + "\n", 1, problem.question, max_turns, max_words)


def feedback_message(
    next_turn: int, mode: str = "simple", state: str = FEEDBACK, actions_left: int = 4, max_words: int = 400
) -> str:
    """The user turn before `next_turn`; "full" mode wraps the env state in the release's Turn/State block.

    In the release's env an answer-less turn changes nothing: the state shown stays the previous one and the
    action budget is not spent (only valid answers count as actions).
    """
    if mode == "simple":
        return state
    return _full_block("Reward:\n0.0\n", next_turn, state, actions_left, max_words)


def _full_block(head: str, turn: int, state: str, left: int, max_words: int) -> str:
    return (
        f"{head}Turn {turn}:\nState:\n{state}\nYou have {left} actions left. {FORMAT_RULE}"
        + FULL_LENGTH_RULE.format(max_words=max_words)
    )


def initial_messages(
    problem: Problem, mode: str = "simple", max_turns: int = 5, shots: list[tuple[Problem, str]] = ()
) -> list[dict]:
    """System prompt, worked examples as earlier user/assistant turns, then the problem."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for shot_problem, shot_answer in shots:
        messages.append({"role": "user", "content": first_user_message(shot_problem, mode, max_turns)})
        messages.append({"role": "assistant", "content": shot_answer})
    messages.append({"role": "user", "content": first_user_message(problem, mode, max_turns)})
    return messages


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The text a model continues: chat template with the generation prompt, plus the `<think>` prefill."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + THINK_PREFILL


@dataclass(frozen=True)
class ParsedTurn:
    """One assistant output as the release stores and scores it."""

    content: str  # what goes into `messages`
    answer: str | None  # first `||` part, stripped; None when the turn gave no answer
    raw_answer: str | None  # the whole text between the answer tags


def parse_turn(output: str) -> ParsedTurn:
    """Parse a generated continuation of the `<think>` prefill, as the release does."""
    text = THINK_PREFILL + output
    match = _TURN_RE.search(text)
    if match is None:
        return ParsedTurn(content=text, answer=None, raw_answer=None)
    think, raw = match.group(1), match.group(2)
    content = f"<think>{think}</think><answer>{raw}</answer>"
    answer = raw.split(ANSWER_SEPARATOR)[0].strip()
    return ParsedTurn(content=content, answer=answer or None, raw_answer=raw)
