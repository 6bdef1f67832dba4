"""MTU-Bench-style tool calls (family "tools"): one call per answer, `tool_name(param=value, ...)`.

Row schema (json / jsonl / parquet / csv with JSON-text cells), one request per row:
    {"id": "weather-1",                                # optional; else `mtu_bench-<row index>`
     "query": "What's the weather in Paris tomorrow?",
     "tools": [{"name": "get_weather", "description": "Weather forecast for a city.",
                "parameters": [{"name": "city", "type": "string", "description": "City name"}]}],
     "answer": {"name": "get_weather", "arguments": {"city": "Paris", "day": "tomorrow"}}}
`parameters` may also be a JSON-schema object (`{"properties": {...}}`); `tools` and `arguments` may be JSON
text. `"answer": {"name": "", "arguments": {}}` means no tool should be called (the release's `{"": {}}`);
its gold is `NO_TOOL`. Arguments whose value is null are dropped (Arrow fills absent keys with null).
The gold is `name(param=<JSON value>, ...)`; the question is the query, the tool list and a format line.

There is no default hub source: MTU-Bench (`wpei/MTU-Bench`) ships dialogues in its own shape; convert them to
this schema first. The release's three feedback messages for a wrong tool turn are in FEEDBACK_*.

The answer checker, `tools`: one call `name(param=value, ...)`; correct when the tool name is equal and the
parameters are equal as parsed Python values (order irrelevant, `3 == 3.0`, `"3" != 3`, strings compared
exactly after stripping). The gold `NO_TOOL` means no tool should be called: any non-empty answer without a
call is correct. The release is more lenient (case-insensitive, gold parameters a subset of the answer's).
"""

from __future__ import annotations

import ast
import io
import json
import keyword
import re
import tokenize
from typing import Any

from drift_lite.errors import UserError
from drift_lite.tasks.base import Problem, exact_normalize
from drift_lite.tasks.loading import HubSpec, bad_field, collect, open_source, require

# ---------------------------------------------------------------------------------------------- tools

NO_TOOL = "(no tool call)"  # gold of a request that must be answered without calling a tool
_CALL_LIKE = re.compile(r"[A-Za-z_][\w.]*\s*\(")
_JSON_NAMES = {"true": True, "false": False, "null": None}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _value(node: ast.AST) -> Any:
    if isinstance(node, ast.Name):  # JSON spellings, and unquoted words taken as strings
        return _JSON_NAMES.get(node.id, node.id)
    if isinstance(node, ast.List | ast.Tuple):
        return [_value(item) for item in node.elts]
    if isinstance(node, ast.Dict):
        return {_value(k) if k is not None else None: _value(v) for k, v in zip(node.keys, node.values)}
    return ast.literal_eval(node)


def _rename_keywords(text: str) -> tuple[str, dict[str, str]]:
    """Rename parameters spelled as Python keywords (`from=`, `class=`) so that `ast` can parse the call."""
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)]
    except (tokenize.TokenError, SyntaxError):
        return text, {}
    renamed: dict[str, str] = {}
    out = []
    for k, tok in enumerate(tokens):
        after = tokens[k + 1] if k + 1 < len(tokens) else None
        before = tokens[k - 1] if k > 0 else None
        if (
            tok.type == tokenize.NAME
            and keyword.iskeyword(tok.string)
            and after is not None
            and after.string == "="
            and before is not None
            and before.string in ("(", ",")
        ):
            new = f"_kw_{tok.string}"
            renamed[new] = tok.string
            tok = tok._replace(string=new)
        out.append((tok.type, tok.string))
    return (tokenize.untokenize(out), renamed) if renamed else (text, {})


def parse_call(text: str) -> tuple[str, dict[str, Any]] | None:
    """`name(param=value, ...)` as (name, {param: value}); None when it is not exactly one such call."""
    text = text.strip().strip("`").strip()
    if not text:
        return None
    renamed: dict[str, str] = {}
    try:
        node = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError):
        text, renamed = _rename_keywords(text)
        if not renamed:
            return None
        try:
            node = ast.parse(text, mode="eval").body
        except (SyntaxError, ValueError):
            return None
    if not isinstance(node, ast.Call) or node.args or any(kw.arg is None for kw in node.keywords):
        return None
    name = _dotted(node.func)
    if name is None:
        return None
    try:
        arguments = {renamed.get(kw.arg, kw.arg): _value(kw.value) for kw in node.keywords}
    except (ValueError, TypeError, SyntaxError):
        return None
    if len(arguments) != len(node.keywords):
        return None
    return name, arguments


def format_call(name: str, arguments: dict[str, Any]) -> str:
    """The gold spelling of a call: `name(param=<JSON value>, ...)` in the given parameter order."""
    inner = ", ".join(f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in arguments.items())
    return f"{name}({inner})"


def looks_like_call(text: str) -> bool:
    """True when `text` contains something shaped like a tool call (`word(`)."""
    return bool(_CALL_LIKE.search(text))


def _canon(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list | tuple):
        return [_canon(v) for v in value]
    if isinstance(value, dict):
        return {k: _canon(v) for k, v in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return _canon(a) == _canon(b)


class ToolChecker:
    """Tool calls: same tool name and the same parameters as parsed values, in any order."""

    name = "tools"

    def normalize(self, answer: str) -> str:
        call = parse_call(answer)
        if call is None:
            return exact_normalize(answer)
        name, arguments = call
        return name + json.dumps(_canon(arguments), sort_keys=True, ensure_ascii=False, default=str)

    def is_correct(self, answer: str, gold: str) -> bool:
        if gold.strip() == NO_TOOL:
            return bool(answer.strip()) and not looks_like_call(answer)
        expected, got = parse_call(gold), parse_call(answer)
        if expected is None or got is None or expected[0] != got[0]:
            return False
        want, have = expected[1], got[1]
        return want.keys() == have.keys() and all(_same(want[k], have[k]) for k in want)


# The release (src/eval_math_multiturn_vllm.py, evaluate_mtu_bench) sends "Observation: <message>".
FEEDBACK_NO_TOOL = (
    "Observation: You should not call any tool for this request. Please respond directly without tool calls."
)
FEEDBACK_NEED_TOOL = (
    "Observation: You need to call a tool to complete this task. "
    "Please try again with the appropriate tool call."
)
FEEDBACK_WRONG_CALL = (
    "Observation: The tool call was incorrect. Please check the tool name and parameters, then try again."
)
FEEDBACK_CORRECT = "Observation: Correct!"
CALL_FORMAT = "Answer with one call, tool_name(param=value, ...), or answer directly if no tool applies."
MTU_BENCH_HUB = "wpei/MTU-Bench"
_CHECKER = ToolChecker()


def feedback_for(answer: str | None, gold: str) -> str:
    """The release's feedback for a tool answer: no tool wanted / a call needed / wrong call (or correct).

    `answer` is None for a turn without a parsable answer.
    """
    if answer is not None and _CHECKER.is_correct(answer, gold):
        return FEEDBACK_CORRECT
    if gold.strip() == NO_TOOL:
        return FEEDBACK_NO_TOOL
    if answer is None or (parse_call(answer) is None and not looks_like_call(answer)):
        return FEEDBACK_NEED_TOOL
    return FEEDBACK_WRONG_CALL


def _json(label: str, i: int, name: str, value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise bad_field(label, i, name, "not valid JSON") from None
    return value


def _params(spec: Any) -> list[str]:
    """Parameter descriptions `name: type` from a list of parameter objects or a JSON-schema object."""
    if isinstance(spec, dict):
        props = spec.get("properties") if isinstance(spec.get("properties"), dict) else spec
        return [
            f"{name}: {p.get('type', 'any')}" if isinstance(p, dict) else str(name)
            for name, p in props.items()
            if p is not None and name not in ("type", "required")
        ]
    if isinstance(spec, list):
        return [
            f"{p['name']}: {p.get('type') or 'any'}" if isinstance(p, dict) and p.get("name") else str(p)
            for p in spec
            if p is not None
        ]
    return []


def describe_tools(label: str, i: int, tools: Any) -> tuple[str, list[str]]:
    """The "Available tools" block of the question and the tool names."""
    tools = _json(label, i, "tools", tools)
    if not isinstance(tools, list) or not tools:
        raise bad_field(label, i, "tools", "not a non-empty list of tools")
    lines, names = [], []
    for k, tool in enumerate(tools):
        if not isinstance(tool, dict) or not tool.get("name"):
            raise bad_field(label, i, "tools", f"tool {k} has no name")
        names.append(str(tool["name"]))
        params = ", ".join(_params(_json(label, i, "tools", tool.get("parameters"))))
        about = f": {tool['description'].strip()}" if tool.get("description") else ""
        lines.append(f"- {tool['name']}({params}){about}")
    return "Available tools:\n" + "\n".join(lines), names


def tool_gold(label: str, i: int, answer: Any, names: list[str]) -> str:
    """The gold call text of a row's `answer` object."""
    answer = _json(label, i, "answer", answer)
    if not isinstance(answer, dict) or "name" not in answer:
        raise bad_field(label, i, "answer", 'expected {"name": ..., "arguments": {...}}')
    name = str(answer.get("name") or "").strip()
    if not name:
        return NO_TOOL
    if name not in names:
        raise bad_field(label, i, "answer", f"tool '{name}' is not in 'tools'")
    arguments = _json(label, i, "answer", answer.get("arguments") or {})
    if not isinstance(arguments, dict):
        raise bad_field(label, i, "answer", "'arguments' is not an object")
    gold = format_call(name, {k: v for k, v in arguments.items() if v is not None})
    if parse_call(gold) is None:
        raise bad_field(label, i, "answer", f"cannot be written as a call: {gold[:80]}")
    return gold


def load_mtu_bench(source: str | None, limit: int | None, seed: int) -> list[Problem]:
    """Tool-call requests in the schema above (a local file, or a hub dataset in the same schema)."""
    if not source:
        raise UserError(
            f"mtu_bench has no default source: {MTU_BENCH_HUB} holds dialogues in another shape; convert "
            "them to the schema in drift_lite/tasks/tools.py and pass the file"
        )
    table = open_source(source, HubSpec(source, "test"))

    def make(i: int, row: dict) -> Problem:
        query, tools, answer = require(table.label, i, row, ["query", "tools", "answer"])
        block, names = describe_tools(table.label, i, tools)
        gold = tool_gold(table.label, i, answer, names)
        key = row.get("id") or table.key(i)
        question = f"{str(query).strip()}\n\n{block}\n\n{CALL_FORMAT}"
        return Problem(f"mtu_bench-{key}", question, gold, "tools", {"tools": names})

    return collect(table, list(range(len(table))), limit, seed, make)


LOADERS = {"mtu_bench": load_mtu_bench}
DEFAULT_CHECKER = {"mtu_bench": "tools"}
