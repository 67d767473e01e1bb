"""How retrieved context becomes a streamed prompt: head, chunk pieces, tail.

A streamed request only helps if every chunk *extends* what the server already
prefilled, yet an instruction-tuned model wants its chat template around the
whole conversation. :class:`PromptLayout` splits the template's rendering of
one conversation (system turn, then a user turn holding the context and the
question) into three parts:

* ``head``: everything before the context (system turn, start of the user turn,
  ``Context:``); it goes with the first chunk;
* one *piece* per retrieved document, in retrieval order (append mode), or all
  current documents (update mode: every version is the whole prompt);
* ``tail(question)``: the question, then the template's closing tokens (end of
  the user turn, the assistant header); it is the final chunk, so nothing the
  retrieval does not know yet is ever sent early (the paper's layout).

The server tokenizes every chunk on its own, so streaming equals one-shot only
if the pieces tokenize to the same ids apart as together. The boundary rule
that guarantees it for byte-level BPE (GPT-2-style pre-tokenization, as in
SmolLM2 and Llama 3): every part but the last ends with exactly one ``\\n``
preceded by a non-space, and every part but the first starts with a non-space.
A single newline before a non-space is always a pre-token of its own, so no
BPE merge spans a boundary. :meth:`PromptLayout.piece` normalizes a document
to that shape; :func:`tokenization_mismatch` checks it for a given tokenizer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_SYSTEM = (
    "You answer questions about Python using the context the user gives. "
    "Reply with a short, direct answer."
)
CONTEXT_INTRO = "Context:\n"
_CTX_MARK, _Q_MARK = "\x00STREAM2LLM-CONTEXT\x00", "\x00STREAM2LLM-QUESTION\x00"
_TRAILING_WS = re.compile(r"\s+$")


class ChatTemplateError(ValueError):
    """The model ships no chat template, or one this layout cannot split."""


@dataclass(frozen=True)
class PromptLayout:
    """A streamed prompt's fixed parts (see the module docstring)."""

    head: str
    closing: str  # after the question: end of user turn + assistant header
    question_prefix: str = "Question: "

    def piece(self, text: str) -> str:
        """One document as a chunk body: trailing whitespace cut, one ``\\n`` added,
        leading whitespace cut (the boundary rule); empty text gives ``""``."""
        body = _TRAILING_WS.sub("", text).lstrip()
        return f"{body}\n" if body else ""

    def tail(self, question: str) -> str:
        """The final chunk: the question and the template's closing tokens."""
        return f"{self.question_prefix}{question.strip()}{self.closing}"

    def whole(self, pieces: Sequence[str], question: str) -> str:
        """The one-shot prompt: head + pieces + tail."""
        return self.head + "".join(pieces) + self.tail(question)

    @classmethod
    def from_chat_template(cls, template: str, system: str = DEFAULT_SYSTEM,
                           **render_kw: Any) -> PromptLayout:  # fmt: skip
        """Render one conversation with sentinels where the context and question
        go, and split there."""
        import jinja2

        try:
            rendered = jinja2.Environment().from_string(template).render(
                messages=chat_messages(_CTX_MARK, _Q_MARK, system, question_prefix=""),
                add_generation_prompt=True, **{"bos_token": "", "eos_token": "", **render_kw},
            )  # fmt: skip
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"chat template does not render: {exc}") from exc
        if rendered.count(_CTX_MARK) != 1 or rendered.count(_Q_MARK) != 1:
            raise ChatTemplateError("chat template does not place the user turn's text once")
        head, rest = rendered.split(_CTX_MARK)
        between, closing = rest.split(_Q_MARK)
        if between:
            raise ChatTemplateError(f"chat template inserts {between!r} inside the user turn")
        return cls(head=head, closing=closing)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, system: str = DEFAULT_SYSTEM) -> PromptLayout:
        """The layout of a checkpoint's chat template (``tokenizer_config.json``'s
        ``chat_template``, or ``chat_template.jinja``)."""
        d = Path(model_dir)
        template: str | None = None
        cfg = d / "tokenizer_config.json"
        if cfg.is_file():
            raw = json.loads(cfg.read_text()).get("chat_template")
            template = raw if isinstance(raw, str) else None
        if template is None and (d / "chat_template.jinja").is_file():
            template = (d / "chat_template.jinja").read_text()
        if not template:
            raise ChatTemplateError(
                f"{d} has no chat template (tokenizer_config.json 'chat_template' or "
                "chat_template.jinja); use an instruction-tuned checkpoint, or --prompt plain "
                "(PLAIN_LAYOUT)"
            )
        return cls.from_chat_template(template, system)


def chat_messages(context: str, question: str, system: str = DEFAULT_SYSTEM,
                  question_prefix: str = "Question: ") -> list[dict[str, str]]:  # fmt: skip
    """The conversation a layout splits: a system turn, then one user turn with
    the context first and the question last."""
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": f"{CONTEXT_INTRO}{context}{question_prefix}{question}"},
    ]


# No chat template: the plain instruction prompt (a base model, the tiny test model).
PLAIN_LAYOUT = PromptLayout(
    head="Answer the question using the context below.\n\nContext:\n", closing="\nAnswer:"
)


def for_model(model_dir: str | Path | None) -> PromptLayout:
    """The chat layout of ``model_dir`` (None: :data:`PLAIN_LAYOUT`)."""
    return PLAIN_LAYOUT if model_dir is None else PromptLayout.from_model_dir(model_dir)


def tokenization_mismatch(encode: Any, parts: Sequence[str]) -> int | None:
    """Index of the first part boundary where encoding the parts one by one
    differs from encoding their concatenation, or None if streaming == one-shot.
    ``encode(text) -> list[int]`` (no special tokens added)."""
    whole = list(encode("".join(parts)))
    got: list[int] = []
    for i, part in enumerate(parts):
        got.extend(encode(part))
        if whole[: len(got)] != got:
            return i
    return None if got == whole else len(parts) - 1
