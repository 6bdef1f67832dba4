"""Token ids of a conversation's successive prompts, exactly as tokenizing each whole prompt, for less work.

A multi-turn episode renders its whole conversation again at every turn, and most of it is the previous
prompt. HF tokenizers first split a text at its added tokens and tokenize the pieces between them apart, so a
prompt's ids are the previous prompt's ids up to one of its added tokens, then the ids of the rest of the
text from that token on, when that token is an *anchor*: one that is always matched where its text occurs and
never swallowed by a longer or overlapping added token (`anchors`). Only the new tail is tokenized then, and
the result is checked to begin with the anchor; anything else falls back to the whole prompt.
"""

from __future__ import annotations


def anchors(tokenizer) -> dict[str, int]:
    """The added tokens a prompt may be cut at: special, matched as written (not normalized, no stripping,
    not whole-word only), and sharing no text with another added token or with themselves (neither inside
    one, nor overlapping one's start or end), so every occurrence of their text is that token."""
    added = {i: t for i, t in tokenizer.added_tokens_decoder.items() if t.content}
    contents = [t.content for t in added.values()]
    safe = {}
    for i, t in added.items():
        c = t.content
        if not t.special or t.normalized or t.lstrip or t.rstrip or t.single_word:
            continue
        if _overlap(c, c) or any(o != c and (c in o or _overlap(o, c) or _overlap(c, o)) for o in contents):
            continue  # (an anchor overlapping itself, like "ABA" in "ABABA", has occurrences never matched)
        safe[c] = i
    return safe


def _overlap(a: str, b: str) -> bool:
    """True when a proper suffix of `a` is a proper prefix of `b`."""
    return any(a.endswith(b[:j]) for j in range(1, len(b)))


class PromptTokenizer:
    """`tokenizer(text, add_special_tokens=False)["input_ids"]` for prompts, with a memo
    (a problem's N first prompts are one text; trajectories that gave the same answer share a tail) and the
    previous-prompt shortcut above."""

    def __init__(self, tokenizer, memo_size: int = 4096):
        self.tokenizer = tokenizer
        self.backend = tokenizer.backend_tokenizer if getattr(tokenizer, "is_fast", False) else None
        self.anchors = anchors(tokenizer)
        self.memo: dict[str, list[int]] = {}
        self.memo_size = memo_size
        self.cut = 0  # prompts tokenized from an anchor on (statistics, tests)

    def encode(self, texts: list[str], previous: list[tuple[str, list[int]] | None]) -> list[list[int]]:
        """Ids of each text; `previous[i]`: the same conversation's previous prompt and its ids, or None."""
        plans = [self._plan(text, prev) for text, prev in zip(texts, previous)]
        # each distinct text to tokenize unless memoized: a tail where a plan cuts (the same answer and
        # feedback give the same tail), else the prompt
        todo = [plan[1] if plan is not None else text for text, plan in zip(texts, plans)]
        todo = [text for text in dict.fromkeys(todo) if text not in self.memo]
        fresh = dict(zip(todo, self._call(todo))) if todo else {}
        out = []
        for text, plan in zip(texts, plans):
            if plan is not None:
                head, tail, anchor = plan
                ids = fresh[tail] if tail in fresh else self.memo[tail]
                if ids and ids[0] == anchor:
                    self.cut += 1
                    out.append(head + ids)
                    continue
            if text not in self.memo and text not in fresh:
                fresh[text] = self._call([text])[0]
            out.append(self.memo[text] if text in self.memo else fresh[text])
        if len(self.memo) > self.memo_size:
            self.memo.clear()
        self.memo.update(fresh)
        return out

    def _plan(self, text: str, previous: tuple[str, list[int]] | None) -> tuple[list[int], str, int] | None:
        """(previous ids before its last anchor, the text from that anchor on, the anchor's id), when the
        text extends the previous prompt up to that anchor."""
        if previous is None or not self.anchors:
            return None
        old_text, old_ids = previous
        at, anchor = max((old_text.rfind(c), c) for c in self.anchors)
        if at <= 0 or not text.startswith(old_text[: at + len(anchor)]):
            return None
        anchor_id = self.anchors[anchor]
        k = next((k for k in range(len(old_ids) - 1, -1, -1) if old_ids[k] == anchor_id), None)
        if k is None or old_ids.count(anchor_id) != old_text.count(anchor):
            return None
        return old_ids[:k], text[at:], anchor_id

    def _call(self, texts: list[str]) -> list[list[int]]:
        # One text per call to the Rust tokenizer: a batch call starts its thread pool, which on a small
        # box waits on torch's busy threads, and the transformers wrapper adds its own cost per call; both
        # weigh more than these short texts. For a fast tokenizer `tokenizer(text)` gives these same ids.
        if self.backend is not None:
            return [self.backend.encode(text, add_special_tokens=False).ids for text in texts]
        return [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
