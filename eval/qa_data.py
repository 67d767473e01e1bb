"""The question set: questions with gold answers over the built-in corpus, and its loader.

``eval/data/qa_builtin.jsonl`` holds one question per line::

    {"id": "q01", "question": "...", "answers": ["gold", "alternative"],
     "passage_ids": ["assert#0"]}

``passage_ids`` name the corpus passages (``retrievers.corpus.Passage.id``) that hold
the answer, so retrieval recall can be scored without reading the model's output.
The loader is strict because a silently skipped or mistyped row changes every number
computed from the set: any bad row raises :class:`QuestionSetError` naming its line.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from eval.qa_metrics import normalize_tokens

BUILTIN_NAME = "qa_builtin.jsonl"
FIELDS = ("id", "question", "answers", "passage_ids")


class QuestionSetError(ValueError):
    """A question-set file that cannot be used as is; ``line`` is 1-based (0: whole file)."""

    def __init__(self, path: str | Path, line: int, reason: str) -> None:
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class QAItem:
    """One question; any of ``answers`` counts as correct, any of ``passage_ids`` as
    the passage that holds the answer."""

    id: str
    question: str
    answers: tuple[str, ...]
    passage_ids: tuple[str, ...]


def builtin_path() -> Path:
    """Where the shipped question set lives (package data of ``eval``)."""
    return Path(str(resources.files("eval") / "data" / BUILTIN_NAME))


def _str_list(obj: dict[str, object], key: str) -> tuple[str, ...] | str:
    """The field as a tuple of non-blank strings, or a reason why not."""
    val = obj[key]
    if not isinstance(val, list) or not val:
        return f"'{key}' must be a non-empty list of strings"
    if not all(isinstance(v, str) and v.strip() for v in val):
        return f"'{key}' must hold only non-blank strings"
    return tuple(val)


def parse_row(line: str) -> QAItem | str:
    """One JSON line as an item, or a reason why it is not one (no corpus checks)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"bad JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(obj, dict):
        return "need a JSON object"
    missing = [k for k in FIELDS if k not in obj]
    if missing:
        return f"missing field(s) {missing}"
    extra = sorted(set(obj) - set(FIELDS))
    if extra:
        return f"unknown field(s) {extra}"
    if not isinstance(obj["id"], str) or not obj["id"].strip():
        return "'id' must be a non-blank string"
    if not isinstance(obj["question"], str) or not obj["question"].strip():
        return "'question' must be a non-blank string"
    answers = _str_list(obj, "answers")
    if isinstance(answers, str):
        return answers
    empty = [a for a in answers if not normalize_tokens(a)]
    if empty:  # "..." or "_" normalize to nothing and would match every output
        return f"answer(s) {empty} are empty after normalization"
    pids = _str_list(obj, "passage_ids")
    if isinstance(pids, str):
        return pids
    return QAItem(obj["id"], obj["question"], answers, pids)


def _known_builtin_ids() -> set[str]:
    from retrievers.corpus import builtin_passages

    return {p.id for p in builtin_passages()}


def load_questions(
    path: str | Path | None = None,
    *,
    known_passages: Collection[str] | None = None,
    limit: int | None = None,
) -> list[QAItem]:
    """Every question of ``path`` (default: the built-in set), validated: bad JSON, a
    missing or unknown field, an empty answer list, a passage id not in
    ``known_passages`` (default: the built-in corpus) or a repeated id raises
    :class:`QuestionSetError` naming the line. ``limit`` keeps the first N."""
    p = Path(path) if path is not None else builtin_path()
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise QuestionSetError(p, 0, f"cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise QuestionSetError(p, 0, "not UTF-8 text") from exc
    known = set(known_passages) if known_passages is not None else _known_builtin_ids()
    items: list[QAItem] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        got = parse_row(line)
        if isinstance(got, str):
            raise QuestionSetError(p, lineno, got)
        unknown = [pid for pid in got.passage_ids if pid not in known]
        if unknown:
            raise QuestionSetError(p, lineno, f"unknown passage id(s) {unknown}")
        if got.id in seen:
            raise QuestionSetError(p, lineno, f"duplicate id {got.id!r} (first on line "
                                              f"{seen[got.id]})")
        seen[got.id] = lineno
        items.append(got)
    if not items:
        raise QuestionSetError(p, 0, "no questions")
    return items[:limit] if limit is not None else items
