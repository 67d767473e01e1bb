"""Answer scoring: SQuAD-style normalization, contains-gold and token F1.

Normalization follows SQuAD's evaluation script (lowercase, drop the articles
a/an/the, collapse whitespace) with one change: punctuation becomes a space
instead of vanishing, because the answers here are often code. SQuAD would turn
``object.__call__`` into ``objectcall``; here it is ``object call``, so a model
that says ``__call__()`` still matches the gold ``__call__``.

*contains-gold* asks whether a gold answer's tokens appear as a contiguous run in
the prediction's tokens (whole tokens: "neg" does not match "negation"). A small
instruction model wraps its answer in a sentence, so exact match would score
nearly everything wrong; contains is the usual lenient metric for that, and token
F1 is the stricter companion (a long answer that contains the gold loses precision).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}\u2018\u2019\u201c\u201d\u2013\u2014]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_tokens(text: str) -> list[str]:
    """Lowercase, punctuation -> space, articles dropped, split on whitespace."""
    text = _PUNCT.sub(" ", text.lower())
    return _ARTICLES.sub(" ", text).split()


def normalize(text: str) -> str:
    """The normalized text as one string (tokens joined by single spaces)."""
    return " ".join(normalize_tokens(text))


def _has_run(hay: Sequence[str], needle: Sequence[str]) -> bool:
    n = len(needle)
    return n > 0 and any(list(hay[i : i + n]) == list(needle) for i in range(len(hay) - n + 1))


def contains_gold(prediction: str, answers: Sequence[str]) -> bool:
    """True when some gold answer's normalized tokens occur contiguously in the prediction's."""
    pred = normalize_tokens(prediction)
    return any(_has_run(pred, normalize_tokens(a)) for a in answers)


def token_f1(prediction: str, answer: str) -> float:
    """SQuAD token F1 between one prediction and one gold answer (bag of tokens)."""
    pred, gold = normalize_tokens(prediction), normalize_tokens(answer)
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def best_f1(prediction: str, answers: Sequence[str]) -> float:
    """The F1 against the best-matching gold answer (SQuAD's max over golds)."""
    return max((token_f1(prediction, a) for a in answers), default=0.0)


def first_line(text: str) -> str:
    """The answer proper: generation up to its first blank or new line. A small model
    often goes on with another 'Question:' after answering; scoring that tail would
    reward answers it never gave."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""
