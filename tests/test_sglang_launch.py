"""SGLang's own server launched by ``srt_ext.engines.sglang.launch`` and by
``stream2llm serve --engine sglang``: our tree and hooks active, answers, stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sglang_helpers import sgl_kernel_calls, sglang_server  # noqa: F401  (fixture)

from srt_ext.engines.reference.tiny_model import ensure_tiny_model
from srt_ext.engines.sglang.launch import (
    PLAIN_CHAT_TEMPLATE,
    SGLangServer,
    SGLangServerConfig,
    disabled_model_modules,
    server_argv,
    server_env,
)

ROOT = Path(__file__).resolve().parents[1]


def test_argv_and_env_for_cpu() -> None:
    model = str(ensure_tiny_model())
    cfg = SGLangServerConfig(policy="ours", threads=1, chunked_prefill_size=256)
    argv = server_argv(cfg, model, 31000)
    joined = " ".join(argv)
    assert "-m srt_ext.engines.sglang.server_main" in joined
    assert "--radix-cache-backend stream2llm" in joined
    assert "--attention-backend torch_native" in joined
    assert "--chunked-prefill-size 256" in joined
    assert f"--chat-template {PLAIN_CHAT_TEMPLATE}" in joined  # the tiny model ships none
    assert PLAIN_CHAT_TEMPLATE.is_file()
    env = server_env(cfg, model)
    assert env["SGLANG_USE_CPU_ENGINE"] == "1"
    assert env["STREAM2LLM_POLICY"] == "ours" and env["OMP_NUM_THREADS"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
    disabled = set(env["SGLANG_DISABLED_MODEL_ARCHS"].split(","))
    assert "llama" not in disabled and {"qwen2", "deepseek_v2"} <= disabled


def test_no_model_is_disabled_for_an_unknown_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "not_a_sglang_model"}')
    assert disabled_model_modules(str(tmp_path)) == []
    assert disabled_model_modules(str(tmp_path / "missing")) == []


@pytest.mark.slow
def test_startup_failure_reports_the_log(tmp_path: Path) -> None:
    # a checkpoint dir our side accepts (it has a config.json) but SGLang cannot load
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')
    bad = SGLangServer(SGLangServerConfig(model_path=str(tmp_path), startup_timeout=300),
                       log_path=tmp_path / "server.log")  # fmt: skip
    with pytest.raises(RuntimeError, match="exited with"):
        bad.start(progress=False)
    assert not bad.alive()


@pytest.mark.slow
def test_server_runs_our_tree_and_hooks(sglang_server: SGLangServer) -> None:  # noqa: F811
    log = sglang_server.log_text()
    assert "Tree cache initialized: source=registered('stream2llm') impl=StreamingRadixCache" in log
    assert "stream2llm: hooks applied, stream handlers installed in the scheduler" in log
    r = httpx.post(sglang_server.url + "/generate", timeout=120,
                   json={"input_ids": list(range(1000, 1040)),
                         "sampling_params": {"max_new_tokens": 5, "temperature": 0,
                                             "ignore_eos": True}})  # fmt: skip
    assert r.status_code == 200, r.text
    assert len(r.json()["output_ids"]) == 5
    # what SGLang called of our stand-in computes (the unsupported ops would have raised)
    assert set(sgl_kernel_calls()) <= {"assign_req_to_token_pool_cpu", "copy_all_layer_kv_cache_cpu"}


@pytest.mark.slow
def test_serve_cli_engine_sglang_serves_and_stops(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "stream2llm.cli", "serve", "--engine", "sglang",
                             "--model-path", "tiny-random", "--port", str(port), "--max-total-tokens", "2048"],
                            env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        r = httpx.post(url + "/generate", timeout=120, json={
            "text": "hello", "sampling_params": {"max_new_tokens": 3, "temperature": 0}})  # fmt: skip
        assert r.status_code == 200, r.text
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(120)
    err = proc.stderr.read() if proc.stderr else ""
    assert rc == 0, err
    assert "StreamingRadixCache" in err
    with pytest.raises(httpx.HTTPError):  # the whole server is gone
        httpx.get(url + "/health", timeout=2)
