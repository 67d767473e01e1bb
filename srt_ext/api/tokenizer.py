"""The API room's tokenizer: text <-> token ids, without loading transformers.

The ``tokenizers`` library reads the model directory's ``tokenizer.json`` in
milliseconds, so the API process stays light and starts fast. Special tokens
are not added, except a BOS when the model's tokenizer config asks for one
(``add_bos_token``, as Llama checkpoints do), and only at the start of an
input. Append-mode streams tokenize each chunk's text on its own: the exactness
guarantee is on token ids, and a word split across two chunks may tokenize
differently than the whole text would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class TokenizerRoom:
    def __init__(self, model_path: str | Path) -> None:
        from tokenizers import Tokenizer

        path = Path(model_path)
        self.tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tok.no_padding()  # sentence-embedding tokenizers ship padding/truncation
        self.tok.no_truncation()
        cfg = _read_json(path / "tokenizer_config.json")
        model_cfg = _read_json(path / "config.json")
        self.chat_template: str | None = cfg.get("chat_template")
        self.vocab_size = int(model_cfg.get("vocab_size") or self.tok.get_vocab_size())
        self.max_position_embeddings = int(model_cfg.get("max_position_embeddings") or 1 << 30)
        bos = model_cfg.get("bos_token_id")
        self.bos_id: int | None = bos if cfg.get("add_bos_token") and bos is not None else None

    def encode(self, text: str, first: bool = False) -> list[int]:
        """Token ids of ``text``; ``first``: this text starts the input (BOS rule)."""
        ids = self.tok.encode(text, add_special_tokens=False).ids if text else []
        if first and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        """A prompt for chat messages: the model's Jinja template when it ships
        one, else a plain ``role: content`` transcript ending with ``assistant:``."""
        if self.chat_template:
            try:
                import jinja2

                tmpl = jinja2.Environment().from_string(self.chat_template)
                return tmpl.render(messages=messages, add_generation_prompt=True,
                                   bos_token="", eos_token="")  # fmt: skip
            except Exception:  # noqa: BLE001  (fall back to the plain transcript)
                pass
        lines = [f"{m.get('role', 'user')}: {_content(m.get('content'))}" for m in messages]
        return "\n".join([*lines, "assistant:"])


def _content(c: Any) -> str:
    if isinstance(c, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in c if isinstance(p, dict))
    return "" if c is None else str(c)


def _read_json(p: Path) -> dict[str, Any]:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
