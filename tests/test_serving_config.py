"""One config per layer (issue 11): `stream2llm serve`'s defaults are the dataclasses'
defaults, `ServerOptions` embeds the worker's config, and flat flag names route there."""

from __future__ import annotations

import pytest

from srt_ext.api.options import ServerOptions
from srt_ext.cli.serve import server_options
from srt_ext.worker.config import SERVING_TOKEN_BUDGET, CoreConfig, WorkerConfig
from stream2llm.cli import build_parser


def test_cli_defaults_are_the_config_defaults():
    o, default = server_options(build_parser("serve").parse_args(["serve"])), ServerOptions()
    assert o.worker == default.worker == WorkerConfig()
    # the flags spell "no limit" as 0 where ServerOptions says None
    assert {k: v or None for k, v in vars(o).items()} == {k: v or None for k, v in vars(default).items()}
    assert WorkerConfig().token_budget == CoreConfig().token_budget == SERVING_TOKEN_BUDGET == 512


def test_from_flags_routes_worker_fields_and_refuses_unknown_names():
    o = ServerOptions.from_flags(scheduler="lcas", token_budget=64, max_total_tokens=2048,
                                 threads=1, api_key="k", reader_disconnect="abort")  # fmt: skip
    assert (o.worker.policy, o.worker.token_budget, o.worker.max_total_tokens) == ("lcas", 64, 2048)
    assert (o.api_key, o.reader_disconnect, o.worker.threads) == ("k", "abort", 1)
    cfg = o.worker_config("ipc://in", "ipc://out", "/m")
    assert (cfg.in_addr, cfg.out_addr, cfg.model_path, cfg.policy) == ("ipc://in", "ipc://out", "/m", "lcas")
    with pytest.raises(TypeError, match="unknown server options"):
        ServerOptions.from_flags(tokens_budget=1)
