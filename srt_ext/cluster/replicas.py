"""What a cluster replica is: one public URL that serves the stream API and
SGLang's routes, started, killed and restarted by the cluster.

``SGLangReplica`` is one SGLang server with our plugin (``launch.SGLangServer``),
on a fixed loopback port so a restarted replica keeps its URL. A prefill/decode
pair plugs in as another ``Replica``: ``url`` is the server that holds a
stream's KV while its chunks arrive (the prefill server), and ``router_workers``
says how SGLang's router sees it (a plain worker, or a prefill worker with its
bootstrap port and a decode worker, for the router's PD mode). ``disaggregated_replica`` returns
that kind when its launcher exists (``srt_ext.engines.sglang.disagg``) and
says why not otherwise.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
from pathlib import Path
from typing import Any, Protocol

from srt_ext.engines.sglang.launch import SGLangServer, SGLangServerConfig


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Replica(Protocol):
    name: str
    url: str

    def start(self) -> None: ...  # blocks until it serves (raises with its log tail)

    def alive(self) -> bool: ...

    def kill(self, sig: int = signal.SIGKILL) -> None: ...  # the whole process group, now

    def stop(self, timeout: float) -> int | None: ...  # SIGTERM, wait, SIGKILL; exit code

    def router_workers(self) -> list[tuple[str, str, int | None]]: ...  # (kind, url, bootstrap)

    def log_tail(self) -> str: ...


class SGLangReplica:
    """One SGLang server (our tree, hooks and stream routes) as a cluster replica."""

    def __init__(self, name: str, cfg: SGLangServerConfig, log_dir: str | None) -> None:
        port = cfg.port or free_port(cfg.host)
        self.name = name
        self.cfg = dataclasses.replace(cfg, port=port)
        self.url = f"http://{cfg.host}:{port}"
        self.log_path = (Path(log_dir) / f"{name}.log") if log_dir else None
        self.server: SGLangServer | None = None
        self.returncode: int | None = None

    def start(self) -> None:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.server = SGLangServer(self.cfg, log_path=self.log_path)
        self.returncode = None
        self.server.start(progress=False)

    def alive(self) -> bool:
        return self.server is not None and self.server.alive()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        s = self.server
        if s is None or s.proc is None:
            return
        try:
            os.killpg(s.proc.pid, sig)  # server, scheduler, detokenizer: one group
        except ProcessLookupError:
            pass
        self.returncode = s.proc.wait(30)
        s.stop(timeout=0)

    def stop(self, timeout: float) -> int | None:
        s = self.server
        if s is None or s.proc is None:
            return self.returncode
        proc = s.proc
        s.stop(timeout=timeout)  # SIGTERM: SGLang drains what is in flight
        self.returncode = proc.returncode
        return self.returncode

    def router_workers(self) -> list[tuple[str, str, int | None]]:
        return [("regular", self.url, None)]

    def log_tail(self) -> str:
        return self.server.log_tail() if self.server is not None else ""


class PDReplica:
    """A prefill/decode pair of SGLang servers (``srt_ext.engines.sglang.disagg``'s
    ``PDPair``) as one replica: streams live on the prefill server (``url``), which
    sends a stream's KV to its own decode server at the final chunk; the router sees
    a prefill worker (with its bootstrap port) and a decode worker."""

    def __init__(self, name: str, cfg: SGLangServerConfig, log_dir: str | None) -> None:
        from srt_ext.engines.sglang.disagg.launch import PDConfig

        host = cfg.host
        self.name = name
        prefill, decode, boot = free_port(host), free_port(host), free_port(host)
        base = dataclasses.replace(cfg, port=0, disaggregation_mode="null", decode_url=None)
        self.pd = PDConfig(server=base, transfer_backend=cfg.transfer_backend, bootstrap_port=boot,
                           prefill={"port": prefill}, decode={"port": decode})  # fmt: skip
        self.url = f"http://{host}:{prefill}"
        self.decode_url = f"http://{host}:{decode}"
        self.bootstrap_port = boot
        self.log_dir = (Path(log_dir) / name) if log_dir else None
        self.pair: Any = None
        self.returncode: int | None = None

    def _servers(self) -> list[SGLangServer]:
        p = self.pair
        return [s for s in (p.prefill, p.decode) if s is not None] if p is not None else []

    def start(self) -> None:
        from srt_ext.engines.sglang.disagg.launch import PDPair

        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        self.returncode = None
        self.pair = PDPair(self.pd, log_dir=self.log_dir).start(progress=False)

    def alive(self) -> bool:
        servers = self._servers()
        return len(servers) == 2 and all(s.alive() for s in servers)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        for s in self._servers():
            if s.proc is not None:
                try:
                    os.killpg(s.proc.pid, sig)
                except ProcessLookupError:
                    pass
                code = s.proc.wait(30)
                if s is self.pair.prefill:
                    self.returncode = code
            s.stop(timeout=0)

    def stop(self, timeout: float) -> int | None:
        servers = self._servers()
        if not servers:
            return self.returncode
        codes = []
        for s in servers:  # prefill first: it may still be handing KV to decode
            proc = s.proc
            s.stop(timeout=timeout)
            codes.append(proc.returncode if proc is not None else None)
        self.returncode = codes[0]
        return self.returncode

    def router_workers(self) -> list[tuple[str, str, int | None]]:
        return [("prefill", self.url, self.bootstrap_port), ("decode", self.decode_url, None)]

    def log_tail(self) -> str:
        return "\n".join(f"--- {s.cfg.port}\n{s.log_tail()}" for s in self._servers())


def disaggregated_replica_missing() -> str | None:
    """Why ``--disaggregation`` cannot run here (None when SGLang's prefill/decode
    pairs, ``srt_ext.engines.sglang.disagg.launch.PDPair``, are in this build)."""
    try:
        from srt_ext.engines.sglang.disagg.launch import PDPair  # noqa: F401
    except ImportError as exc:
        return (f"--disaggregation: SGLang prefill/decode pairs are not in this build "
                f"(srt_ext.engines.sglang.disagg.launch: {exc}); run the cluster without it")  # fmt: skip
    return None
