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


def test_worker_cpus_flag_parses_and_refuses_bad_ids():
    import argparse
    import os

    from srt_ext.cli.serve import cpu_list

    assert cpu_list("1,0,1") == (0, 1)
    last = (os.cpu_count() or 1) - 1
    assert server_options(build_parser("serve").parse_args(
        ["serve", "--worker-cpus", str(last)])).worker.cpus == (last,)  # fmt: skip
    for bad in ("x", "", str(last + 1), "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            cpu_list(bad)


@pytest.mark.timeout(120)
def test_worker_runs_on_the_cpus_it_is_given():
    import os

    import zmq

    from srt_ext import messages as m
    from srt_ext.engines.reference.model_store import TINY_MODEL
    from srt_ext.worker.process import start_worker

    mine = os.sched_getaffinity(0)
    if len(mine) < 2:
        pytest.skip("needs two CPUs to tell a pinned worker from an inherited affinity")
    cpu = max(mine)
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    in_port = push.bind_to_random_port("tcp://127.0.0.1")
    out_port = pull.bind_to_random_port("tcp://127.0.0.1")
    cfg = WorkerConfig(model_path=TINY_MODEL, max_total_tokens=1024, threads=1, cpus=(cpu,),
                       in_addr=f"tcp://127.0.0.1:{in_port}", out_addr=f"tcp://127.0.0.1:{out_port}")  # fmt: skip
    proc = start_worker(cfg)
    try:
        assert pull.poll(100_000), "the worker never said it was ready"
        assert isinstance(m.decode_from_worker(pull.recv()), m.Pong)
        assert os.sched_getaffinity(proc.pid) == {cpu} != mine  # type: ignore[arg-type]
    finally:
        push.send(m.encode(m.Shutdown()))
        proc.join(10)
        if proc.is_alive():
            proc.kill()
        push.close(0)
        pull.close(0)
        ctx.term()


@pytest.mark.parametrize("argv,option", [
    (["--dtype", "float64"], "--dtype"),
    (["--disaggregation-mode", "prefill"], "--disaggregation-mode"),
    (["--max-worker-restarts", "9"], "--max-worker-restarts"),
])  # fmt: skip
def test_sglang_engine_refuses_what_it_cannot_honour(argv: list[str], option: str) -> None:
    """Never silently dropped: SGLang's engine (the default) names the option it refuses
    (the options it honours are tested against real servers in test_sglang_options)."""
    from srt_ext.cli.serve import check_args

    why = check_args(build_parser("serve").parse_args(["serve", *argv]))
    assert why is not None and option in why
