"""Every ``stream2llm serve`` option on SGLang's engine: honoured, or refused by name.

- CLI (no server): every option of ``serve`` is in one table
  (``srt_ext.engines.sglang.serve.OPTIONS``); what cannot be honoured exits 2
  naming the option; what is honoured reaches SGLang's flags or the environment
  our hooks read in its processes.
- The session's SGLang server: the stream routes take SGLang's whole sampling
  vocabulary (and refuse unknown fields and n > 1), ``/v1/stats`` has the keys
  of ``srt_ext.stats_schema`` (the reference server's too), ``flush_cache`` of
  both clients reads SGLang's text answer and names a refusal.
- One more SGLang server with the API-room options set (key file, per-client
  and input limits, body limit, idle timeout, reader-disconnect abort, CPUs,
  shutdown grace): each enforced, against the real server.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from pydantic import ValidationError
from sglang_helpers import shared_sglang_server

from srt_ext.api.models import OpenStreamRequest, SamplingParamsModel, SGLangSamplingParamsModel
from srt_ext.cli.serve import check_args, run
from srt_ext.client.rest import AsyncClient, Client, FlushRefused, ServerError
from srt_ext.engines.sglang.launch import SGLangServer, option_env, server_argv
from srt_ext.engines.sglang.serve import OPTIONS, Mapped, config_from_args
from srt_ext.stats_schema import STATS_KEYS
from stream2llm.cli import build_parser

pytestmark = pytest.mark.timeout(900)
SP = {"max_new_tokens": 4, "temperature": 0.0}
ALICE, BOB = {"Authorization": "Bearer k-alice"}, {"Authorization": "Bearer k-bob"}


def _args(*argv: str) -> Any:
    return build_parser("serve").parse_args(["serve", *argv])


# ---- the CLI: one table, refusals by name ------------------------------------------------
def test_every_serve_option_is_in_the_table() -> None:
    """A new ``serve`` option without an entry would be dropped silently: it must
    be mapped, refused or marked local, and mapped ones name a config field."""
    missing = set(vars(_args())) - set(OPTIONS)
    assert not missing, f"serve options missing from serve.OPTIONS: {sorted(missing)}"
    fields = set(config_from_args(_args()).__dataclass_fields__)
    assert {e.field for e in OPTIONS.values() if isinstance(e, Mapped)} <= fields


@pytest.mark.parametrize("argv,option", [
    (["--max-worker-restarts", "2"], "--max-worker-restarts"),
    (["--restart-backoff", "3"], "--restart-backoff"),
    (["--dtype", "float64"], "--dtype"),
    (["--disaggregation-mode", "prefill"], "--disaggregation-mode"),
    (["--bootstrap", "tcp://127.0.0.1:1"], "--bootstrap"),
])  # fmt: skip
def test_refused_options_exit_2_naming_the_option(argv: list[str], option: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    why = check_args(_args(*argv))
    assert why is not None and option in why
    assert run(_args(*argv)) == 2
    assert option in capsys.readouterr().err
    if option != "--dtype":  # the reference engine takes them
        assert check_args(_args("--engine", "reference", *argv)) is None


def test_honoured_options_reach_sglang(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("alice k-alice\n")
    args = _args("--api-key-file", str(keys), "--api-key", "k-shared", "--max-input-tokens", "100",
                 "--max-streams-per-client", "2", "--max-body-bytes", "1000",
                 "--reader-disconnect", "abort", "--stream-idle-timeout", "7",
                 "--preemption", "swap", "--cost-model", "cpu-reference", "--dtype", "bfloat16",
                 "--worker-cpus", "0", "--shutdown-grace", "3", "--scheduler", "ours",
                 "--token-budget", "64", "--threads", "1")  # fmt: skip
    assert check_args(args) is None
    cfg = config_from_args(args)
    assert cfg.worker_cpus == (0,) and cfg.shutdown_grace == 3 and cfg.chunked_prefill_size == 64
    assert option_env(cfg) == {
        "STREAM2LLM_API_KEY_FILE": str(keys.resolve()), "STREAM2LLM_API_KEY": "k-shared",
        "STREAM2LLM_MAX_INPUT_TOKENS": "100", "STREAM2LLM_MAX_STREAMS_PER_CLIENT": "2",
        "STREAM2LLM_MAX_BODY_BYTES": "1000", "STREAM2LLM_READER_DISCONNECT": "abort",
        "STREAM2LLM_STREAM_IDLE_TIMEOUT": "7", "STREAM2LLM_PREEMPTION": "swap",
        "STREAM2LLM_COST_MODEL": "cpu-reference", "STREAM2LLM_POLICY": "ours",
        "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    argv = server_argv(cfg, "/m", 1)
    assert "--api-key" not in argv  # with a key file the shared key is one of ours
    assert argv[argv.index("--dtype") + 1] == "bfloat16"
    plain = server_argv(config_from_args(_args("--api-key", "k")), "/m", 1)
    assert plain[plain.index("--api-key") + 1] == "k"
    assert plain[plain.index("--dtype") + 1] == "float32"  # auto on CPU: not the checkpoint's fp16


# ---- sampling on SGLang's engine (models) --------------------------------------------------
def test_sglang_sampling_model_covers_sglang_fields() -> None:
    """Every API field of SGLang's SamplingParams is accepted (``seed`` is ours);
    unknown fields are refused naming the field; the reference model is unchanged."""
    from sglang.srt.sampling.sampling_params import SamplingParams

    internal = {"stop_strs", "stop_regex_strs", "stop_str_max_len", "stop_regex_max_len",
                "is_normalized", "ebnf_full_assistant"}  # fmt: skip
    api = set(SamplingParams.__struct_fields__) - internal
    assert set(SGLangSamplingParamsModel.model_fields) == api | {"seed"}
    with pytest.raises(ValidationError, match="finale"):
        SGLangSamplingParamsModel.model_validate({"finale": True})
    sp = SGLangSamplingParamsModel(seed=7, top_k=0, min_p=0.1, stop_token_ids=[-1, 5])
    assert sp.sglang()["sampling_seed"] == 7 and sp.sglang()["top_k"] == -1
    assert "seed" not in sp.sglang() and sp.sglang()["stop_token_ids"] == [5]
    with pytest.raises(ValidationError, match="reference engine"):
        OpenStreamRequest.model_validate({"sampling_params": {"min_p": 0.5}})
    assert SamplingParamsModel().spec().max_new_tokens == 16


# ---- the session's SGLang server -------------------------------------------------------------
def _warm(server: SGLangServer, headers: dict[str, str] | None = None) -> SGLangServer:
    """One one-shot first: a fresh server's first forward can take longer than the
    frontend waits for a scheduler reply (30 s) on the loaded 2-core box."""
    r = httpx.post(server.url + "/generate", json={"input_ids": [5, 6], "sampling_params": SP},
                   headers=headers, timeout=600)  # fmt: skip
    assert r.status_code == 200, r.text
    return server


@pytest.fixture(scope="module")
def sgl() -> SGLangServer:
    return _warm(shared_sglang_server())


def _open(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(url + "/v1/streams", json=body, headers=headers, timeout=60)


def test_streams_take_sglangs_sampling_params(sgl: SGLangServer) -> None:
    sp = {**SP, "min_p": 0.05, "repetition_penalty": 1.1, "frequency_penalty": 0.2,
          "presence_penalty": 0.1, "min_new_tokens": 2, "stop": ["zzz"], "seed": 3,
          "stop_token_ids": [0], "skip_special_tokens": False}  # fmt: skip
    with Client(sgl.url) as c:
        rid = c.open_stream(sampling_params=sp, input_ids=[5, 6, 7, 8])
        c.send_chunk(rid, input_ids=[9, 10], final=True, sampling_params={**sp, "max_new_tokens": 6})
        out = c.result(rid)
    assert 2 <= len(out["output_ids"]) <= 6, out
    for bad, named in [({"typo_k": 1}, "typo_k"), ({"top_p": "x"}, "top_p")]:
        r = _open(sgl.url, {"input_ids": [5, 6], "final": True, "sampling_params": bad})
        assert r.status_code == 422 and named in r.json()["error"], r.text
    for bad, named in [({"n": 2}, "n=2"), ({"regex": "(ab)+"}, "regex"),
                       ({"top_p": 2.0}, "top_p"), ({"min_p": 1.5}, "min_p")]:  # fmt: skip
        r = _open(sgl.url, {"input_ids": [5, 6], "final": True, "sampling_params": bad})
        assert r.status_code == 400 and named in r.json()["error"], r.text  # verify: SGLang's


def test_stats_have_one_schema_on_both_engines(sgl: SGLangServer) -> None:
    from server_helpers import server

    with Client(sgl.url) as c:
        sgl_stats = c.stats()
    with server() as h, Client(h.url) as c:
        ref_stats = c.stats()
    assert set(sgl_stats) == set(ref_stats) == STATS_KEYS
    for s in (sgl_stats, ref_stats):
        assert s["preemptions"] == {"recompute": s["preemptions_recompute"],
                                    "swap": s["preemptions_swap"]}  # fmt: skip
        assert s["kv_used_tokens"] + s["kv_free_tokens"] == s["kv_capacity_tokens"]
    assert sgl_stats["engine_forward_s"] == 0.0  # not timed on SGLang's engine (documented)
    assert sgl_stats["steps"] > 0  # SGLang's forward count (the warm-up ran)


def test_flush_cache_reads_sglangs_text_and_names_a_refusal(sgl: SGLangServer) -> None:
    """Both clients: SGLang's plain-text success is None; a parked stream (its KV
    pinned) makes SGLang refuse, which is a ``FlushRefused`` with its reason."""
    with Client(sgl.url) as c:
        assert c.flush_cache() is None
        rid = c.open_stream(sampling_params=SP, input_ids=list(range(5, 40)))
        _until(lambda: c.stats()["streams_parked"] >= 1, "the stream parked")
        t0 = time.monotonic()
        with pytest.raises(FlushRefused) as err:
            c.flush_cache(wait_s=1.5)
        assert err.value.status == 400 and err.value.reason and time.monotonic() - t0 < 20

        async def both() -> None:
            async with AsyncClient(sgl.url) as ac:
                with pytest.raises(FlushRefused):
                    await ac.flush_cache(wait_s=1.0)
                await ac.abort(rid)
                assert await ac.flush_cache() is None

        asyncio.run(both())


def _until(cond: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


# ---- one more server: the API-room options ---------------------------------------------------
KEYS = Path(tempfile.mkdtemp(prefix="stream2llm-keys-")) / "keys"
CPUS = ((os.cpu_count() or 1) - 1,)  # the last CPU: a real pin (any is the default)
IDLE_S = 3.0
LIMITED = {"api_key_file": str(KEYS), "api_key": "k-shared", "max_streams_per_client": 2,
           "max_input_tokens": 200, "max_body_bytes": 4096, "stream_idle_timeout": IDLE_S,
           "reader_disconnect": "abort", "worker_cpus": CPUS, "shutdown_grace": 3.0}  # fmt: skip


@pytest.fixture(scope="module")
def limited() -> SGLangServer:
    KEYS.write_text("# name key\nalice k-alice\nbob k-bob\n")
    return _warm(shared_sglang_server(**LIMITED), ALICE)


def test_key_file_guards_every_route_but_health(limited: SGLangServer) -> None:
    url = limited.url
    gen = {"input_ids": [5, 6, 7], "sampling_params": SP}
    for method, path, body in [("POST", "/generate", gen), ("POST", "/v1/streams", gen),
                               ("GET", "/v1/stats", None), ("GET", "/v1/models", None),
                               ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2}),
                               ("POST", "/flush_cache", None)]:  # fmt: skip
        for headers in (None, {"Authorization": "Bearer wrong"}):
            r = httpx.request(method, url + path, json=body, headers=headers, timeout=60)
            assert r.status_code == 401 and "API key" in r.json()["error"], (path, r.text)
    assert httpx.get(url + "/health", timeout=60).status_code == 200
    assert httpx.post(url + "/generate", json=gen, headers=ALICE, timeout=60).status_code == 200
    with Client(url, api_key="k-bob") as c:
        assert set(c.stats()) == STATS_KEYS
    with Client(url, api_key="k-shared") as c:  # --api-key joins the file's keys
        assert len(c.generate(input_ids=[5, 6], sampling_params=SP)["output_ids"]) == 4


def test_limits_count_per_key_name(limited: SGLangServer) -> None:
    url, rids = limited.url, []
    for _ in range(2):
        r = _open(url, {"input_ids": [5, 6, 7], "sampling_params": SP}, ALICE)
        assert r.status_code == 201, r.text
        rids.append(r.json()["rid"])
    r = _open(url, {"input_ids": [5, 6, 7], "sampling_params": SP}, ALICE)
    assert r.status_code == 429 and "max-streams-per-client" in r.json()["error"], r.text
    r = _open(url, {"input_ids": [5, 6, 7], "sampling_params": SP}, BOB)  # another client
    assert r.status_code == 201, r.text
    rids.append(r.json()["rid"])
    for rid, key in zip(rids, ("k-alice", "k-alice", "k-bob"), strict=True):
        with Client(url, api_key=key) as c:
            c.abort(rid)


def test_input_and_body_limits(limited: SGLangServer) -> None:
    url, long = limited.url, list(range(5, 255))  # 250 tokens > 200
    r = httpx.post(url + "/generate", json={"input_ids": long, "sampling_params": SP},
                   headers=ALICE, timeout=60)  # fmt: skip
    assert r.status_code == 400 and "max-input-tokens" in r.text, r.text
    r = _open(url, {"input_ids": long, "sampling_params": SP}, ALICE)
    assert r.status_code == 400 and "max-input-tokens" in r.json()["error"], r.text
    with Client(url, api_key="k-alice") as c:
        rid = c.open_stream(sampling_params=SP, input_ids=long[:150])
        with pytest.raises(ServerError) as err:
            c.send_chunk(rid, input_ids=long[150:])  # 250 in all
        assert err.value.status == 400 and "max-input-tokens" in err.value.reason
        c.send_chunk(rid, input_ids=long[150:190], final=True)  # 190: fits
        assert len(c.result(rid)["output_ids"]) == 4
    big = {"text": "x" * 5000, "sampling_params": SP}
    for path in ("/generate", "/v1/streams"):
        r = httpx.post(url + path, json=big, headers=ALICE, timeout=60)
        assert r.status_code == 413 and "max-body-bytes" in r.json()["error"], r.text


def test_idle_streams_are_reaped_and_leaving_readers_abort(limited: SGLangServer) -> None:
    """``stream_idle_timeout``: a partial stream nobody touches is aborted, its
    result a 410; ``reader_disconnect=abort``: a result reader that gives up aborts
    its stream (gone: 404), long before the idle timeout would."""
    with Client(limited.url, api_key="k-alice") as c:
        idle = c.open_stream(sampling_params=SP, input_ids=[5, 6, 7])
        read = c.open_stream(sampling_params=SP, input_ids=[8, 9, 10])
        t0 = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):  # a reader that gives up after 1 s
            c.http.get(f"/v1/streams/{read}/result", timeout=1.0)
        # a chunk is a look that never aborts: 404 once the stream is gone
        _until(lambda: c.http.post(f"/v1/streams/{read}/chunks",
                                   json={"input_ids": [11]}).status_code == 404,
               "the left reader's stream was aborted", 10)  # fmt: skip
        assert time.monotonic() - t0 < IDLE_S
        time.sleep(IDLE_S + 3.0)  # the reaper looks every IDLE_S / 2
        r = c.http.get(f"/v1/streams/{idle}/result", timeout=30)
        assert r.status_code == 410 and "idle" in r.json()["error"], r.text


def test_processes_pinned_and_shutdown_grace(limited: SGLangServer) -> None:
    """All of SGLang's processes run on ``worker_cpus``; SIGTERM with a request
    still open (a parked stream) stops the group after ``shutdown_grace`` s."""
    want = set(CPUS)
    assert limited.proc is not None
    procs = [psutil.Process(limited.proc.pid), *psutil.Process(limited.proc.pid).children(True)]
    assert len(procs) >= 3 and all(set(p.cpu_affinity()) == want for p in procs), procs
    with Client(limited.url, api_key="k-alice") as c:
        c.open_stream(sampling_params=SP, input_ids=[5, 6, 7])
    t0 = time.monotonic()
    limited.stop()
    assert time.monotonic() - t0 < 3.0 + 10.0
    _, alive = psutil.wait_procs(procs, timeout=10)  # SIGKILLed: gone once the box runs them
    assert not alive, alive
