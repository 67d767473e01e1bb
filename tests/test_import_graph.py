"""The import graph between rooms flows one way, checked by parsing (nothing is imported).

Every ``.py`` under the rooms below is parsed with :mod:`ast`; each ``import`` of a project
module (at top level, inside a function, or under ``if TYPE_CHECKING:``: a lazy import is
still a dependency) must satisfy every rule whose ``files`` prefix covers the importing
module. A rule either lists what its files *may* import from the project (``may_import``,
an allow-list: anything else in the project is refused) or what they must *not* import
(``must_not``, a deny-list, for finer rules inside a room, with ``unless`` naming what
stays allowed inside it), or both. ``EXCEPTIONS`` lists the known breaks, each with why.

To add a rule, append a row to ``RULES``; prefixes are dotted module names and match the
module itself and everything under it (``"srt_ext.client"`` covers ``srt_ext.client`` and
``srt_ext.client.frontend``). Third-party imports are never checked.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: The rooms whose files are checked.
ROOMS = ("radix_stream", "scheduler", "retrievers", "srt_ext", "eval", "stream2llm")
#: Top-level names that are the project (an import of anything else is third-party).
PROJECT = (*ROOMS, "tests", "scripts", "cpu_site")
#: Dependency-free modules every room may use.
NEUTRAL = ("stream2llm.lcp", "stream2llm.trace", "stream2llm.tiling")


@dataclass(frozen=True)
class Rule:
    files: str
    """Module prefix of the importing files the rule applies to."""
    may_import: tuple[str, ...] | None = None
    """Project modules (prefixes) these files may import; None: no allow-list."""
    must_not: tuple[str, ...] = ()
    """Project modules (prefixes) these files must never import..."""
    unless: tuple[str, ...] = ()
    """...except these (prefixes inside ``must_not`` that stay allowed)."""
    why: str = ""


RULES: list[Rule] = [
    Rule("stream2llm.lcp", may_import=(), why="neutral: imports nothing from the project"),
    Rule("stream2llm.trace", may_import=(), why="neutral: imports nothing from the project"),
    Rule("stream2llm.tiling", may_import=(), why="neutral: imports nothing from the project"),
    Rule("stream2llm.__init__", may_import=(), why="importing the package must stay free"),
    Rule("stream2llm.cli", why="the entry point: may import any room (lazily)"),
    Rule("radix_stream", may_import=("radix_stream", *NEUTRAL),
         why="the KV floor: below the scheduler, knows no room above it"),
    Rule("scheduler", may_import=("scheduler", "radix_stream", *NEUTRAL),
         why="the scheduler uses radix_stream, never a room above it"),
    Rule("retrievers", may_import=("retrievers", *NEUTRAL),
         why="retrievers produce traces; they need no serving room"),
    Rule("srt_ext", may_import=("srt_ext", "scheduler", "radix_stream", "retrievers", *NEUTRAL),
         why="the serving rooms use the scheduler and below, never eval"),
    Rule("eval", may_import=("eval", "srt_ext", "scheduler", "radix_stream", "retrievers",
                             *NEUTRAL),
         why="eval drives every room; nothing imports eval but the CLI"),
]

#: Known breaks of the rules above, each with the reason it is tolerated for now:
#: (importing module prefix, imported module prefix, why). A stale row fails a test.
EXCEPTIONS: list[tuple[str, str, str]] = [
    ("retrievers.cli", "srt_ext",
     "the index/crawl commands resolve --model-path (lazily) through the reference engine's "
     "model store (srt_ext/engine[s/reference]/model_store.py, dependency-free); goes when "
     "the model store moves to a neutral module"),
]


def covers(prefix: str, module: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    statement: str
    target: str
    rule: Rule

    def __str__(self) -> str:
        what = (f"{self.rule.files} may import only {list(self.rule.may_import)}"
                if self.rule.may_import is not None and not any(
                    covers(p, self.target) for p in self.rule.may_import)
                else f"{self.rule.files} must not import {list(self.rule.must_not)}")
        return (f"{self.path}:{self.line}: `{self.statement}` imports {self.target}, "
                f"but {what} ({self.rule.why})")


def module_name(path: Path) -> str:
    """Dotted name of a file under REPO; a package's ``__init__`` keeps its ``__init__``
    (so a rule can name it), and relative imports resolve against the package."""
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def imports(module: str, source: str) -> Iterator[tuple[ast.stmt, str]]:
    """(statement, imported module) for each project import in ``source``.

    ``from a.b import c`` yields ``a.b.c`` (c may be a submodule or a name: either way
    it comes from ``a.b``, and prefixes match both).
    """
    package = module.rsplit(".", 1)[0] if "." in module else ""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                up = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            targets = [base if a.name == "*" else f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            if t.split(".", 1)[0] in PROJECT:
                yield node, t


def excused(module: str, target: str,
            exceptions: list[tuple[str, str, str]] = EXCEPTIONS) -> bool:
    return any(covers(f, module) and covers(t, target) for f, t, _ in exceptions)


def check_source(path: str, module: str, source: str,
                 rules: list[Rule] | None = None) -> list[Violation]:
    """Every rule broken by one file's imports (EXCEPTIONS aside)."""
    rules = RULES if rules is None else rules
    mine = [r for r in rules if covers(r.files, module)]
    out, seen = [], set()
    for node, target in imports(module, source):
        if excused(module, target):
            continue
        for r in mine:
            allowed = r.may_import is None or any(covers(p, target) for p in r.may_import)
            denied = any(covers(p, target) for p in r.must_not) and not any(
                covers(p, target) for p in r.unless)
            if (not allowed or denied) and (id(node), r) not in seen:  # once per statement
                seen.add((id(node), r))
                out.append(Violation(path, node.lineno, ast.unparse(node), target, r))
    return sorted(out, key=lambda v: v.line)


def room_files() -> list[Path]:
    return sorted(p for room in ROOMS for p in (REPO / room).rglob("*.py"))


def test_imports_follow_the_rules() -> None:
    found = []
    for p in room_files():
        found += check_source(str(p.relative_to(REPO)), module_name(p), p.read_text())
    assert not found, "imports against the room rules:\n" + "\n".join(map(str, found))


def test_every_exception_is_still_needed() -> None:
    used = {(f, t) for p in room_files()
            for _, target in imports(module_name(p), p.read_text())
            for f, t, _ in EXCEPTIONS
            if covers(f, module_name(p)) and covers(t, target)}
    stale = [(f, t) for f, t, _ in EXCEPTIONS if (f, t) not in used]
    assert not stale, f"exceptions no import needs any more (delete them): {stale}"


def test_every_file_is_under_a_rule() -> None:
    bare = [str(p.relative_to(REPO)) for p in room_files()
            if not any(covers(r.files, module_name(p)) for r in RULES)]
    assert not bare, f"files no rule covers (add a row to RULES): {bare}"


# --- the checker itself ------------------------------------------------------------------

SYNTHETIC = """\
from __future__ import annotations

import numpy as np
from typing import TYPE_CHECKING

from radix_stream import StreamKVCache
from stream2llm.trace import Query

if TYPE_CHECKING:
    from srt_ext.worker_core import WorkerCore


def lazy() -> None:
    import eval.sim
"""


def test_checker_catches_a_violation() -> None:
    found = check_source("scheduler/fake.py", "scheduler.fake", SYNTHETIC)
    assert [(v.line, v.target) for v in found] == [(10, "srt_ext.worker_core.WorkerCore"),
                                                   (14, "eval.sim")]
    msg = str(found[0])
    assert msg.startswith("scheduler/fake.py:10: `from srt_ext.worker_core import WorkerCore`")
    assert "scheduler may import only" in msg


def test_checker_allows_what_the_rules_allow() -> None:
    src = "from scheduler.core import Scheduler\nfrom retrievers.hnsw import HnswIndex\n"
    assert check_source("eval/fake.py", "eval.fake", src) == []
    # neutral modules import nothing from the project, not even each other's rooms
    assert len(check_source("stream2llm/trace.py", "stream2llm.trace", src)) == 2


def test_checker_resolves_relative_imports_and_deny_rules() -> None:
    rules = [Rule("srt_ext.client", must_not=("srt_ext.worker",), unless=("srt_ext.worker.api",),
                  why="client is a process")]
    src = ("from ..worker import core, more\nfrom . import messages\nfrom .. import worker\n"
           "from ..worker.api import Reply\n")
    found = check_source("srt_ext/client/fake.py", "srt_ext.client.fake", src, rules)
    assert [(v.line, v.target) for v in found] == [(1, "srt_ext.worker.core"),
                                                   (3, "srt_ext.worker")]
    assert "srt_ext.client must not import ['srt_ext.worker']" in str(found[0])

