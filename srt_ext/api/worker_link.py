"""The API room's side of the link to the worker: sockets, replies, events.

Why request/reply for chunks: a client that streams context wants to know what
each chunk did (tokens kept, tokens invalidated) and whether it was refused, so
every request carries a ``req_id`` and its handler awaits the matching reply.
Token events arrive on the same socket and are folded into a per-request
``ReqState``; readers (``GET /result``, SSE) wait on its change notification.
A watchdog fails every waiting request with a clear error when the worker dies,
so nothing hangs. The request states themselves (and how long finished ones are
kept) live in ``req_state.py``, stop strings in ``stop.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from srt_ext import messages as m
from srt_ext.api.req_state import ReqState, RequestTable, WorkerError
from srt_ext.api.stop import match_stop

log = logging.getLogger("stream2llm.server")


class WorkerLink:
    """Owns the worker process and the two ZMQ sockets to it."""

    def __init__(self, start_proc: Callable[[str, str], Any],
                 decode: Callable[[list[int]], str] | None = None) -> None:  # fmt: skip
        self._start_proc = start_proc
        self.decode = decode
        self._dir = tempfile.mkdtemp(prefix="s2l-")
        self.in_addr = f"ipc://{os.path.join(self._dir, 'to_worker')}"
        self.out_addr = f"ipc://{os.path.join(self._dir, 'from_worker')}"
        self.ctx = zmq.asyncio.Context()
        self.proc: Any = None
        self.table = RequestTable()
        self.states = self.table.states  # rid -> state (live, and finished ones kept)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task[Any]] = []
        self.dead: str | None = None
        self.generation = 0  # bumped by every restart (fresh socket paths)
        self.on_first_token: Callable[[ReqState], None] | None = None
        self.on_finished: Callable[[ReqState], None] | None = None

    async def start(self, ready_timeout: float = 600.0) -> None:
        """Bind the sockets, start the worker and wait for its "ready"."""
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.bind(self.in_addr)
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.bind(self.out_addr)
        self.proc = self._start_proc(self.in_addr, self.out_addr)
        deadline = time.monotonic() + ready_timeout
        while not await self.pull.poll(500):  # the worker says "ready" once loaded
            if not self.proc.is_alive():
                raise RuntimeError(f"worker exited during startup (code {self.proc.exitcode})")
            if time.monotonic() > deadline:
                raise RuntimeError("worker did not become ready in time")
        m.decode_from_worker(await self.pull.recv())
        self._tasks = [asyncio.create_task(self._recv_loop()),
                       asyncio.create_task(self._watchdog())]  # fmt: skip
        self.dead = None

    async def restart(self, ready_timeout: float = 600.0) -> None:
        """Replace a dead worker: new sockets on new paths (nothing queued for the old
        peer can reach the new one), a new process, wait for ready. Requests the old
        worker held were already failed by the watchdog; until this returns,
        ``dead`` stays set so new requests get 503 at once."""
        self.dead = self.dead or "the worker is restarting"
        for t in self._tasks:
            t.cancel()
        self._tasks = []
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
            await asyncio.to_thread(self.proc.join, 5.0)
        self.push.close(0)
        self.pull.close(0)
        self.generation += 1
        g = self.generation
        self.in_addr = f"ipc://{os.path.join(self._dir, f'to_worker.{g}')}"
        self.out_addr = f"ipc://{os.path.join(self._dir, f'from_worker.{g}')}"
        await self.start(ready_timeout)

    async def close(self) -> None:
        if self.proc is not None and self.proc.is_alive() and self.dead is None:
            await self.push.send(m.encode(m.Shutdown()))
        for t in self._tasks:
            t.cancel()
        if self.proc is not None:
            await asyncio.to_thread(self.proc.join, 5.0)
            if self.proc.is_alive():
                self.proc.kill()
                await asyncio.to_thread(self.proc.join, 5.0)
        self.push.close(0)
        self.pull.close(0)
        self.ctx.term()

    # ---- requests ----------------------------------------------------------------
    def next_id(self) -> int:
        return next(self._ids)

    async def request(self, msg: Any, timeout: float = 60.0) -> Any:
        """Send one request and await its reply; raises ``WorkerError``."""
        if self.dead:
            raise WorkerError(503, self.dead)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[msg.req_id] = fut
        try:
            await self.push.send(m.encode(msg))
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise WorkerError(504, "the worker did not answer in time") from None
        finally:
            self._pending.pop(msg.req_id, None)
        if isinstance(reply, m.ErrorReply):
            raise WorkerError(reply.status, reply.reason)
        return reply

    async def send(self, msg: Any) -> None:
        """Fire and forget (its reply, if any, is dropped)."""
        if not self.dead:
            await self.push.send(m.encode(msg))

    def add_state(self, st: ReqState) -> None:
        self.table.add(st)

    def drop_state(self, rid: str) -> None:
        self.table.drop(rid)

    def fail(self, st: ReqState, err: WorkerError) -> None:
        """End a request with an error its readers (and later GETs) will see."""
        if st.done:
            return
        st.error = err
        self._finish(st, time.monotonic())
        st.notify()

    # ---- the receive side -------------------------------------------------------
    async def _recv_loop(self) -> None:
        while True:
            data = await self.pull.recv()
            try:
                msg = m.decode_from_worker(data)
            except m.MessageError as exc:
                log.error("invalid message from the worker: %s", exc)
                continue
            if isinstance(msg, m.EventBatch):
                for ev in msg.events:
                    self._apply(ev)
            else:
                fut = self._pending.get(msg.req_id)
                if fut is not None and not fut.done():
                    fut.set_result(msg)

    def _apply(self, ev: Any) -> None:
        st = self.states.get(ev.rid)
        if st is None or st.done:
            return
        now = time.monotonic()
        if isinstance(ev, m.TokenEvent):
            st.output_ids.append(ev.token)
            if st.first_token_t is None:
                st.first_token_t = now
                st.stamps["api_first_token_at"] = time.time()
                if self.on_first_token:
                    self.on_first_token(st)
            if st.stop and self.decode and match_stop(st, self.decode(st.output_ids)):
                asyncio.get_running_loop().create_task(self.send(m.Abort(self.next_id(), st.rid)))
                self._finish(st, now)
        elif isinstance(ev, m.FinishedEvent):
            st.finish = ev
            st.finish_reason = {"type": ev.reason}
            if ev.matched is not None:
                st.finish_reason["matched"] = ev.matched
            self._finish(st, now)
        else:
            st.error = WorkerError(ev.status, ev.reason)
            self._finish(st, now)
        st.notify()

    def _finish(self, st: ReqState, now: float) -> None:
        st.done_t = now
        self.table.finished(st.rid)
        if self.on_finished:
            self.on_finished(st)

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            if self.proc is not None and not self.proc.is_alive():
                self.dead = f"the worker process died (exit code {self.proc.exitcode})"
                log.error(self.dead)
                for fut in self._pending.values():
                    if not fut.done():
                        fut.set_exception(WorkerError(503, self.dead))
                for st in list(self.states.values()):
                    self.fail(st, WorkerError(503, self.dead))
                return
