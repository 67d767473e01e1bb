"""The HTTP side of ``--engine sglang`` without a server: the idle reaper and the
reply matching of ``StreamFrontend`` over a stand-in tokenizer manager that
answers like SGLang's scheduler (an ack per message, same rid)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import radix_stream._sglang  # noqa: F401

import pytest

from srt_ext.engines.sglang.frontend import HttpStream, StreamFrontend, StreamHTTPError
from srt_ext.engines.sglang.messages import StreamAbortReq, StreamChunkOutput


def _frontend() -> tuple[StreamFrontend, list]:
    sent: list = []
    fe: StreamFrontend

    def dispatch(msg: object) -> None:  # the scheduler acks on SGLang's socket
        sent.append(msg)
        asyncio.get_running_loop().call_soon(fe.on_output, StreamChunkOutput(rid=msg.rid))  # type: ignore[attr-defined]

    tm = SimpleNamespace(auto_create_handle_loop=lambda: None, _dispatch_to_scheduler=dispatch,
                         rid_to_state={})  # fmt: skip
    fe = StreamFrontend(tm)
    fe.idle_timeout = 300.0
    return fe, sent


def test_idle_partial_streams_are_reaped_and_nothing_else() -> None:
    async def main() -> None:
        fe, sent = _frontend()
        now = 1000.0
        specs = {"idle": dict(sent=True), "idle-unsent": dict(), "final": dict(sent=True, final=True),
                 "read": dict(sent=True, readers=1), "fresh": dict(sent=True, last_active=now - 10)}
        for rid, kw in specs.items():
            st = fe.streams[rid] = HttpStream(rid, "append", {})
            st.last_active = kw.pop("last_active", now - 400)
            for k, v in kw.items():
                setattr(st, k, v)
        reaped = await fe.reap_idle(now)
        assert sorted(reaped) == ["idle", "idle-unsent"]
        assert [(type(m), m.rid) for m in sent] == [(StreamAbortReq, "idle")]  # only one reached SGLang
        assert set(fe.streams) == {"final", "read", "fresh"}
        with pytest.raises(StreamHTTPError) as err:
            fe.result(fe.get("idle"))
        assert err.value.status == 410

    asyncio.run(main())


def test_replies_are_matched_by_rid() -> None:
    async def main() -> None:
        fe, _ = _frontend()
        out = await fe.call(StreamAbortReq(rid="x"))
        assert out.rid == "x" and not fe.waiters
        fe.on_output(StreamChunkOutput(rid="nobody-waits"))  # a late reply is dropped

    asyncio.run(main())


def test_an_unacknowledged_chunk_aborts_its_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk the scheduler does not acknowledge in time may still be applied later,
    so the stream is aborted behind it (same queue, so after it): 504 naming that,
    then the stream is gone on this side, and no later chunk can interleave."""
    from srt_ext.engines.sglang import frontend as fe_mod
    from srt_ext.engines.sglang.messages import StreamChunkReq

    async def main() -> None:
        fe, sent = _frontend()
        fe._tok = SimpleNamespace(vocab_size=100)
        silent = lambda msg: sent.append(msg)  # noqa: E731  (a scheduler busy in a forward)
        fe.tm._dispatch_to_scheduler = silent
        st = fe.streams["s"] = HttpStream("s", "append", {})
        st.sent = True
        monkeypatch.setattr(fe_mod, "REPLY_TIMEOUT_S", 0.05)
        with pytest.raises(StreamHTTPError) as err:
            await fe.chunk("s", None, [5, 6], False, None, None)
        assert err.value.status == 504 and "was aborted" in err.value.reason
        assert [type(m) for m in sent] == [StreamChunkReq, StreamAbortReq]
        assert [m.rid for m in sent] == ["s", "s"] and "s" not in fe.streams and not fe.waiters
        with pytest.raises(StreamHTTPError) as gone:
            await fe.chunk("s", None, [7], True, None, None)
        assert gone.value.status == 404

    asyncio.run(main())
