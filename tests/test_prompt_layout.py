"""Streamed prompts from the chat template: head + pieces + tail tokenize, piece by
piece, to exactly the ids of the template applied to the whole conversation."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jinja2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrievers.corpus import load_corpus
from retrievers.prompt import (
    PLAIN_LAYOUT,
    ChatTemplateError,
    PromptLayout,
    chat_messages,
    tokenization_mismatch,
)
from srt_ext.api.tokenizer import TokenizerRoom
from srt_ext.engines.reference.model_store import TINY_MODEL, resolve_model
from stream2llm.cli import main


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return resolve_model(None)


@pytest.fixture(scope="module")
def layout(model_dir: Path) -> PromptLayout:
    return PromptLayout.from_model_dir(model_dir)


@pytest.fixture(scope="module")
def encode(model_dir: Path):
    room = TokenizerRoom(model_dir)  # what the server tokenizes each chunk with
    return lambda text: room.encode(text, first=False)


def _template(model_dir: Path) -> str:
    return json.loads((model_dir / "tokenizer_config.json").read_text())["chat_template"]


def test_layout_splits_the_template(layout: PromptLayout) -> None:
    assert layout.head.startswith("<|im_start|>system\n") and layout.head.endswith(
        "<|im_start|>user\nContext:\n")
    assert layout.closing == "<|im_end|>\n<|im_start|>assistant\n"
    assert layout.tail("Why?") == "Question: Why?<|im_end|>\n<|im_start|>assistant\n"


def test_streamed_ids_equal_the_whole_conversation(model_dir: Path, layout: PromptLayout,
                                                    encode) -> None:  # fmt: skip
    """Real passages of the built-in corpus, random cuts and counts: the chunks the
    server tokenizes one by one give the ids of apply-template(whole conversation)."""
    passages = load_corpus(None, limit=120)
    tmpl = jinja2.Environment().from_string(_template(model_dir))
    rng = random.Random(7)
    for _ in range(60):
        docs = [layout.piece(f"[{p.title}]\n" + p.text[: rng.randint(1, 600)])
                for p in rng.sample(passages, rng.randint(1, 4))]  # fmt: skip
        question = f"What does {rng.choice(passages).title} do?"
        chunks = [layout.head + docs[0], *docs[1:], layout.tail(question)]
        whole = tmpl.render(messages=chat_messages("".join(docs), question),
                            add_generation_prompt=True)  # fmt: skip
        assert "".join(chunks) == whole == layout.whole(docs, question)
        assert tokenization_mismatch(encode, chunks) is None
        assert [t for c in chunks for t in encode(c)] == encode(whole)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from("ab \n\t.,:é1"), min_size=0, max_size=30),
                min_size=1, max_size=4))  # fmt: skip
def test_boundary_rule_holds_for_any_text(encode, layout: PromptLayout, texts) -> None:
    docs = [layout.piece(t) for t in texts]
    chunks = [layout.head, *[d for d in docs if d], layout.tail("q?")]
    assert tokenization_mismatch(encode, chunks) is None


def test_rule_is_needed(encode) -> None:
    """Without it a boundary can change the ids: a blank line split across chunks."""
    assert tokenization_mismatch(encode, ["Context:\nsome text\n\n", "Next doc"]) == 0


def test_template_less_checkpoint_is_a_clear_error(capsys) -> None:
    tiny = resolve_model(TINY_MODEL)  # a WordPiece tokenizer, no chat template
    with pytest.raises(ChatTemplateError, match="no chat template"):
        PromptLayout.from_model_dir(tiny)
    with pytest.raises(ChatTemplateError, match="does not render"):
        PromptLayout.from_chat_template("{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="once"):
        PromptLayout.from_chat_template("{{ messages[0]['content'] }}")
    rc = main(["crawl", "--local-site", "--question", "q", "--model-path", TINY_MODEL])
    assert rc == 2 and "--prompt plain" in capsys.readouterr().err


def test_plain_layout_keeps_the_old_prompt() -> None:
    assert PLAIN_LAYOUT.tail("Why?") == "Question: Why?\nAnswer:"
    assert PLAIN_LAYOUT.piece("  doc text \n\n") == "doc text\n" and PLAIN_LAYOUT.piece(" ") == ""
