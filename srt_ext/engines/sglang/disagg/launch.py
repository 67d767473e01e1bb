"""Start a prefill/decode pair of SGLang's own servers (``--disaggregation-mode``)
with stream2llm plugged in, linked by a KV transfer backend (default ``zmq``, ours).

``PDPair(PDConfig(...))`` is a context manager; ``pair.prefill.url`` /
``pair.decode.url`` are the two HTTP servers, ``pair.bootstrap_port`` is the
prefill side's bootstrap server (SGLang's), ``pair.router_args()`` the arguments
SGLang's router takes in PD mode (``--pd-disaggregation --prefill URL PORT
--decode URL``). The stream routes run on the prefill server; it forwards a
stream's final request to ``decode_url`` (``STREAM2LLM_PD_DECODE_URL`` in its
environment, set here) and relays the decode server's output.
"""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srt_ext.engines.sglang.launch import SGLangServer, SGLangServerConfig

DECODE_URL_ENV = "STREAM2LLM_PD_DECODE_URL"
BOOTSTRAP_PORT_ENV = "STREAM2LLM_PD_BOOTSTRAP_PORT"
DECODE_KEY_ENV = "STREAM2LLM_PD_DECODE_API_KEY"
DEFAULT_BOOTSTRAP_PORT = 8998  # SGLang's --disaggregation-bootstrap-port default
TRANSFER_BACKENDS = ("zmq", "mooncake", "mooncake_tcp", "nixl", "mori", "ascend", "fake")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def pd_args(mode: str, backend: str = "zmq", bootstrap_port: int | None = None) -> list[str]:
    """SGLang's options for one side of a pair (``mode`` prefill | decode)."""
    if mode not in ("prefill", "decode"):
        raise ValueError(f"disaggregation mode {mode!r}: prefill or decode")
    if backend not in TRANSFER_BACKENDS:
        raise ValueError(f"transfer backend {backend!r}: one of {', '.join(TRANSFER_BACKENDS)}")
    argv = ["--disaggregation-mode", mode, "--disaggregation-transfer-backend", backend]
    if bootstrap_port:
        argv += ["--disaggregation-bootstrap-port", str(bootstrap_port)]
    if mode == "prefill":
        # a partial stream's row must not be sent after its step (SGLang's overlap
        # loop ships a chunked row's KV from the result processor)
        argv += ["--disable-overlap-schedule"]
    if mode == "decode":
        # SGLang infers host_pool (a HiCache pool) for a decode server's retraction
        # backup; per-request host tensors need no HiCache
        argv += ["--disaggregation-decode-retraction-backup", "cpu_tensor"]
    return argv


def pd_env(cfg: SGLangServerConfig) -> dict[str, str]:
    """A prefill server's environment for the stream hand-off (``streams``)."""
    env = {DECODE_URL_ENV: str(cfg.decode_url).rstrip("/"),
           BOOTSTRAP_PORT_ENV: str(cfg.bootstrap_port or DEFAULT_BOOTSTRAP_PORT)}  # fmt: skip
    if cfg.api_key:  # with --api-key-file it is one of the keys both servers take
        env[DECODE_KEY_ENV] = cfg.api_key
    return env


@dataclass
class PDConfig:
    """One prefill and one decode server; ``server`` is the shared base config (model,
    pool, threads...), ``prefill``/``decode`` override fields per side."""

    server: SGLangServerConfig = field(default_factory=SGLangServerConfig)
    transfer_backend: str = "zmq"
    bootstrap_port: int = 0  # 0: a free port
    prefill: dict[str, Any] = field(default_factory=dict)
    decode: dict[str, Any] = field(default_factory=dict)
    # decode's pool: None takes the prefill's max_total_tokens
    decode_max_total_tokens: int | None = None


class PDPair:
    """``with PDPair(cfg) as pd: pd.prefill.url, pd.decode.url``. The decode server
    starts first (the prefill side is told its URL), both stop on exit."""

    def __init__(self, cfg: PDConfig | None = None, log_dir: str | Path | None = None) -> None:
        self.cfg = cfg or PDConfig()
        self.log_dir = Path(log_dir) if log_dir else None
        self.prefill: SGLangServer | None = None
        self.decode: SGLangServer | None = None
        self.bootstrap_port = 0

    def _side(self, mode: str, over: dict[str, Any]) -> SGLangServer:
        fields = dict(over)
        if mode == "decode" and self.cfg.decode_max_total_tokens:
            fields.setdefault("max_total_tokens", self.cfg.decode_max_total_tokens)
        fields.update(disaggregation_mode=mode, transfer_backend=self.cfg.transfer_backend,
                      bootstrap_port=self.bootstrap_port)  # fmt: skip
        if mode == "prefill":
            assert self.decode is not None
            fields["decode_url"] = self.decode.url
        cfg = dataclasses.replace(self.cfg.server, **fields)
        log = self.log_dir / f"{mode}.log" if self.log_dir else None
        return SGLangServer(cfg, log_path=log)

    def start(self, progress: bool = False) -> PDPair:
        self.bootstrap_port = self.cfg.bootstrap_port or free_port(self.cfg.server.host)
        try:
            self.decode = self._side("decode", self.cfg.decode).start(progress=progress)
            self.prefill = self._side("prefill", self.cfg.prefill).start(progress=progress)
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self, side: str, progress: bool = False) -> SGLangServer:
        """Start ``side`` (prefill | decode) again after it died or was stopped, on the
        same bootstrap port (a new decode server gets a new URL: the prefill server
        is started again too, to be told it)."""
        if side == "decode":
            if self.decode is not None:
                self.decode.stop()
            self.decode = self._side("decode", self.cfg.decode).start(progress=progress)
            side = "prefill"
        if side != "prefill":
            raise ValueError(f"side {side!r}: prefill or decode")
        if self.prefill is not None:
            self.prefill.stop()
        self.prefill = self._side("prefill", self.cfg.prefill).start(progress=progress)
        return self.prefill

    def stop(self) -> None:
        for s in (self.prefill, self.decode):
            if s is not None:
                s.stop()

    def router_args(self) -> list[str]:
        """SGLang router's PD-mode arguments for this pair."""
        assert self.prefill is not None and self.decode is not None
        return ["--pd-disaggregation", "--prefill", self.prefill.url, str(self.bootstrap_port),
                "--decode", self.decode.url]  # fmt: skip

    def __enter__(self) -> PDPair:
        return self.start() if self.prefill is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def launch_pd_pair(progress: bool = False, log_dir: str | Path | None = None,
                   **server_fields: Any) -> PDPair:  # fmt: skip
    """``PDPair(PDConfig(server=SGLangServerConfig(**server_fields))).start()``; the
    PD fields of :class:`PDConfig` (``transfer_backend``, ``bootstrap_port``,
    ``prefill``, ``decode``, ``decode_max_total_tokens``) may be passed too."""
    pd_keys = {f.name for f in dataclasses.fields(PDConfig)} - {"server"}
    pd = {k: server_fields.pop(k) for k in list(server_fields) if k in pd_keys}
    cfg = PDConfig(server=SGLangServerConfig(**server_fields), **pd)
    return PDPair(cfg, log_dir=log_dir).start(progress=progress)
