"""The question set and the answer metrics of `stream2llm eval-quality`."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from pathlib import Path

import pytest

from eval.qa_data import QAItem, QuestionSetError, builtin_path, load_questions
from eval.qa_metrics import best_f1, contains_gold, first_line, normalize, token_f1
from retrievers.corpus import builtin_passages

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"id": "a", "question": "What?", "answers": ["x"], "passage_ids": ["assert#0"]}


# ---- the shipped set -------------------------------------------------------------

def test_builtin_set_is_valid_and_answerable_from_its_passages() -> None:
    items = load_questions()
    assert len(items) >= 60
    text = {p.id: normalize(f"{p.title} {p.text}") for p in builtin_passages()}
    for q in items:
        # the canonical (first) gold answer is written in a gold passage ...
        assert any(f" {normalize(q.answers[0])} " in f" {text[pid]} " for pid in q.passage_ids), q
        # ... and no gold answer is given away by the question itself
        assert not contains_gold(q.question, q.answers), q


def test_question_set_ships_as_package_data() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    rel = builtin_path().relative_to(ROOT / "eval").as_posix()
    patterns = cfg["package-data"].get("eval", []) + cfg["package-data"].get("*", [])
    assert any(fnmatch.fnmatch(rel, pat) for pat in patterns), (rel, patterns)


# ---- the loader rejects bad rows, naming the line ----------------------------------

def _write(tmp_path: Path, rows: list[object]) -> Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("{not json", "bad JSON"),
        ({k: v for k, v in GOOD.items() if k != "answers"}, "missing field"),
        ({**GOOD, "answers": []}, "'answers' must be a non-empty list"),
        ({**GOOD, "answers": ["  "]}, "non-blank strings"),
        ({**GOOD, "answers": ["..."]}, "empty after normalization"),
        ({**GOOD, "passage_ids": ["no-such#3"]}, "unknown passage id"),
        ({**GOOD, "question": ""}, "'question' must be"),
        ({**GOOD, "extra": 1}, "unknown field"),
        ([1, 2], "need a JSON object"),
        (GOOD, "duplicate id 'a' (first on line 1)"),
    ],
)
def test_bad_row_raises_typed_error_naming_the_line(
    tmp_path: Path, bad: object, reason: str
) -> None:
    path = _write(tmp_path, [GOOD, bad])
    with pytest.raises(QuestionSetError) as err:
        load_questions(path, known_passages={"assert#0"})
    assert err.value.line == 2 and reason in err.value.reason
    assert f"{path}:2" in str(err.value)


def test_loader_accepts_good_rows_and_reports_unreadable_files(tmp_path: Path) -> None:
    path = _write(tmp_path, [GOOD, "", {**GOOD, "id": "b", "answers": ["y", "z"]}])
    got = load_questions(path, known_passages={"assert#0"})
    assert got == [QAItem("a", "What?", ("x",), ("assert#0",)),
                   QAItem("b", "What?", ("y", "z"), ("assert#0",))]
    with pytest.raises(QuestionSetError, match="cannot read"):
        load_questions(tmp_path / "missing.jsonl", known_passages=set())
    with pytest.raises(QuestionSetError, match="no questions"):
        load_questions(_write(tmp_path, [""]), known_passages=set())


# ---- metrics against hand-checked cases --------------------------------------------

def test_normalize_lowercases_drops_articles_and_splits_punctuation() -> None:
    assert normalize("The  AssertionError, an exception!") == "assertionerror exception"
    assert normalize("object.__call__(self)") == "object call self"
    assert normalize("last-in, first-out") == "last in first out"
    assert normalize("“Ellipsis”") == "ellipsis"


def test_contains_gold_matches_whole_token_runs() -> None:
    assert contains_gold("It raises an AssertionError.", ["AssertionError"])
    assert contains_gold("Use the __call__() method", ["__call__"])
    assert contains_gold("pow(2, n)", ["pow(2,n)"])  # same tokens either way
    assert not contains_gold("the negation", ["__neg__"])  # "neg" is not "negation"
    assert not contains_gold("a coroutine", ["coroutine function"])
    assert contains_gold("a coroutine", ["coroutine function", "coroutine"])
    assert not contains_gold("", ["x"])


def test_token_f1_hand_checked() -> None:
    # pred {the->dropped} "memory address of x" vs gold "memory address": common 2,
    # precision 2/4, recall 2/2 -> F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    assert token_f1("the memory address of x", "memory address") == pytest.approx(2 / 3)
    assert token_f1("NameError", "nameerror") == 1.0
    assert token_f1("TypeError", "NameError") == 0.0
    # duplicates count once per gold occurrence (bag semantics): "none none" vs "none"
    assert token_f1("None None", "None") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert best_f1("a static method", ["staticmethod", "static method"]) == 1.0
    assert best_f1("x", []) == 0.0


def test_first_line_keeps_the_answer_and_drops_the_rambling_tail() -> None:
    assert first_line("\n  NameError.\nQuestion: what else?") == "NameError."
    assert first_line("   ") == ""
