"""The rooms of srt_ext import one way (issue 11): checked by parsing, not importing.

* ``client/`` runs in the caller's process: it never imports the server's rooms;
* ``worker/`` never imports ``api/`` (the worker process must not need FastAPI);
* ``api/`` reaches the worker only through the shared ``srt_ext.messages``, its config and the
  launcher (``worker.process``: start the child); never ``worker.core``;
* ``engines/reference`` is below both rooms: it never imports ``api/``, ``worker/`` or
  ``client/``; ``engines/sglang`` serves our stream routes from inside SGLang's own server,
  so it reuses the API room's request models and tokenizer, and nothing else of the rooms.
Lazy imports inside functions count too: a lazy import still ties the rooms together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRT = ROOT / "srt_ext"

# room -> (forbidden module prefixes, allowed exceptions)
RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "client": (("srt_ext.api", "srt_ext.worker", "srt_ext.engines"), ()),
    "worker": (("srt_ext.api", "srt_ext.client"), ()),
    "api": (("srt_ext.worker", "srt_ext.client"), ("srt_ext.worker.process", "srt_ext.worker.config")),
    "engines/reference": (("srt_ext.api", "srt_ext.worker", "srt_ext.client"), ()),
    # the request rules both front doors apply, written once: bodies, tokenizer,
    # keys and limits, the typed refusal
    "engines/sglang": (("srt_ext.api", "srt_ext.worker", "srt_ext.client"),
                       ("srt_ext.api.models", "srt_ext.api.tokenizer", "srt_ext.api.limits",
                        "srt_ext.api.req_state")),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            # `from srt_ext.worker import core` imports srt_ext.worker.core
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def _hits(mod: str, prefixes: tuple[str, ...]) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("room", sorted(RULES))
def test_room_imports_flow_one_way(room: str) -> None:
    forbidden, allowed = RULES[room]
    files = sorted((SRT / room).rglob("*.py"))
    assert files, f"srt_ext/{room}/ is empty"
    bad = [
        f"{p.relative_to(ROOT)}:{line}: {mod}"
        for p in files
        for line, mod in _imports(p)
        if _hits(mod, forbidden) and not _hits(mod, allowed)
        and not (room == "api" and mod == "srt_ext.worker")  # `from srt_ext.worker import process`
    ]
    assert not bad, f"srt_ext/{room}/ imports across rooms:\n" + "\n".join(bad)


def test_messages_are_shared_and_import_no_room() -> None:
    rooms = ("srt_ext.api", "srt_ext.worker", "srt_ext.client", "srt_ext.engines")
    assert not [mod for _, mod in _imports(SRT / "messages.py") if _hits(mod, rooms)]
