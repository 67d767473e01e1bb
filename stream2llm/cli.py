"""The `stream2llm` command: one entry point, a sub-command per room.

Each room exposes ``add_parser(subparsers)`` in its own ``cli`` module and sets
``func`` on its parser; modules are imported only when their sub-command runs,
so `stream2llm sim` never loads the HTTP stack and `stream2llm serve` never
loads matplotlib.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command -> module that defines it (module.add_parser(subparsers) registers it)
COMMANDS: dict[str, str] = {
    "bench-radix": "eval.bench_radix",
    "bench-cpu": "eval.bench_cpu",
    "bench-streams": "eval.bench_streams",
    "bench-realtime": "eval.bench_realtime",
    "sim": "eval.sim_cli",
    "replay": "eval.replay",
    "validate": "eval.validate",
    "serve": "srt_ext.cli.serve",
    "cluster": "srt_ext.cluster.cli",
    "sim-cluster": "eval.cluster_sim_cli",
    "profile": "srt_ext.cli.profile",
    "index": "retrievers.cli",
    "crawl": "retrievers.cli",
    "demo": "eval.demo",
    "eval-quality": "eval.quality_cli",
    "record-traces": "eval.record_traces",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stream2llm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    loaded: set[str] = set()
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            continue
        if module_name in loaded:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if only is not None and exc.name == module_name:
                raise SystemExit(f"stream2llm: `{name}` is not available in this build") from exc
            if exc.name != module_name:
                raise
            continue
        module.add_parser(sub)
        loaded.add(module_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from retrievers.prompt import ChatTemplateError
    from srt_ext.engines.reference.model_store import ModelStoreError

    try:
        return int(args.func(args) or 0)
    except (ModelStoreError, ChatTemplateError) as exc:  # no model, a bad GGUF, no template
        print(f"stream2llm: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
