"""A Realtime conversation as the token ids of one prompt.

Why token ids and not text: the session sends each new version of the whole
conversation to an update-mode stream, whose KV is kept to the longest common
prefix of the old and new ids. Rendering the conversation with the chat template
and tokenizing the whole text keeps an appended item's ids after the old ones
(templates are concatenations of per-message blocks), so nothing already
prefilled is recomputed. A reply the model generated is the exception: its text,
tokenized again, need not give back the tokens the model produced, and SGLang's
radix tree holds the tokens. So each assistant item that came from the model is
spliced in as its own ``output_ids``, and the next turn's prompt starts with
exactly the finished request's prompt + output: the tree matches all of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# render(messages, add_generation_prompt) -> prompt text
Render = Callable[[list[dict[str, str]], bool], str]
# encode(text, first) -> ids; ``first``: the text starts the input (the BOS rule)
Encode = Callable[[str, bool], list[int]]


@dataclass
class Item:
    """One message of the conversation (the Realtime API's ``message`` item)."""

    id: str
    role: str  # "system" | "user" | "assistant"
    text: str
    status: str = "completed"  # "in_progress" while its response runs: not rendered
    output_ids: list[int] | None = None  # the model's own tokens, for a reply it generated

    def message(self) -> dict[str, str]:
        return {"role": self.role, "content": self.text}


def plain_render(messages: list[dict[str, str]], gen: bool) -> str:
    """``role: content`` lines, then ``assistant:`` when a reply is asked for: the
    text ``plain_chat.jinja`` (the server's fallback chat template) gives at
    generation time, but without the trailing ``assistant:`` while items still
    arrive, so an appended item keeps the whole previous version as its prefix."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + ("assistant:" if gen else "")


def model_template(model_path: str | Path, config_template: str | None) -> str | None:
    """The checkpoint's own chat template (``tokenizer_config.json``'s, else
    ``chat_template.jinja``); None when it ships none. The server's
    ``--chat-template plain_chat.jinja`` is not used here: it always ends with
    ``assistant:``, so every item would invalidate the previous version's tail."""
    if config_template:
        return config_template
    path = Path(model_path) / "chat_template.jinja"
    return path.read_text() if path.exists() else None


def make_render(template: str | None, hf_tokenizer: Any = None) -> Render:
    """A renderer with the model's template through the tokenizer's own
    ``apply_chat_template`` (BOS left to the encoder's rule, so it is never
    doubled), or ``plain_render`` when the model has no template."""
    if template is None:
        return plain_render
    if hf_tokenizer is not None:

        def render(messages: list[dict[str, str]], gen: bool) -> str:
            return hf_tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                    add_generation_prompt=gen, bos_token="")  # fmt: skip

        return render
    import jinja2

    compiled = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(template)
    return lambda messages, gen: compiled.render(messages=messages, add_generation_prompt=gen, bos_token="")


def prompt_ids(items: list[Item], gen: bool, render: Render, encode: Encode) -> list[int]:
    """Token ids of the conversation (``gen``: with the generation prompt).

    Text is rendered for the whole conversation and tokenized in stretches
    between the model's replies; each reply is its ``output_ids``. A template
    that is not a concatenation (an earlier block changes when a message is
    added) falls back to tokenizing the whole text."""
    live = [it for it in items if it.status != "in_progress"]
    whole = render([it.message() for it in live], gen)
    ids: list[int] = []
    done = ""  # the prefix of ``whole`` that ``ids`` stand for
    for k, it in enumerate(live):
        if it.output_ids is None:
            continue
        head = render([x.message() for x in live[:k]], True)
        body = render([x.message() for x in live[: k + 1]], False)
        at = body.find(it.text, len(head))
        if not (head.startswith(done) and body.startswith(head) and at >= 0 and whole.startswith(body)):
            return encode(whole, True)
        ids += encode(head[len(done):], not done)
        ids += it.output_ids
        done = body[: at + len(it.text)]
    return ids + encode(whole[len(done):], not done)
