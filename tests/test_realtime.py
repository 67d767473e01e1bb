"""``/v1/realtime`` on SGLang's server, driven by the real ``openai`` SDK client.

Each test opens ``client.realtime.connect`` against the session's shared SGLang
server (tiny model, 64-token prefill chunks), streams items, and checks the
reply against a one-shot ``/generate`` of the same prompt ids on a flushed
cache. The tiny model has no chat template, so the session renders the plain
``role: content`` transcript; ``expected_ids`` builds the same ids here from the
tokenizer, independently of the server's code. Every test leaves the server
idle: nothing open, nothing pinned (SGLang's idle check aborts on a leak).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai
import pytest
from sglang_helpers import shared_sglang_server

from srt_ext.api.tokenizer import TokenizerRoom
from srt_ext.engines.reference.model_store import TINY_MODEL, resolve_model
from srt_ext.engines.sglang.realtime import admit

pytestmark = pytest.mark.timeout(600)
PASSAGES = ["the first retrieved passage is about cats and their long naps",
            "a second passage explains why dogs bark at the mail carrier",
            "the third passage lists birds that migrate south in winter"]  # fmt: skip
QUESTION = "question: which animal sleeps the most?"


@pytest.fixture(scope="module")
def url() -> str:
    return shared_sglang_server().url


@pytest.fixture(scope="module")
def tok() -> TokenizerRoom:
    return TokenizerRoom(resolve_model(TINY_MODEL))


@pytest.fixture(autouse=True)
def idle_after(url: str) -> Any:
    yield
    s = wait_idle(url)
    assert s["streams_open"] == 0 and s["streams_parked"] == 0 and s["kv_pinned_tokens"] == 0, s


# ---- helpers ---------------------------------------------------------------------------
def stats(url: str) -> dict[str, Any]:
    return dict(httpx.get(url + "/v1/stats", timeout=30).json())


def wait_idle(url: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        s = stats(url)
        if (s["streams_open"] == 0 and s["kv_pinned_tokens"] == 0) or time.monotonic() > deadline:
            return s
        time.sleep(0.1)


def flush(url: str) -> None:
    deadline = time.monotonic() + 30
    while httpx.post(url + "/flush_cache", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "/flush_cache kept refusing"
        time.sleep(0.2)


def expected_ids(tok: TokenizerRoom, turns: list[tuple[str, str | list[int]]], gen: bool = True) -> list[int]:
    """The plain transcript's ids; an assistant turn given as ids is the model's
    own reply, spliced in (as the session does)."""
    ids: list[int] = []
    text = ""
    for role, content in turns:
        if isinstance(content, list):
            ids += tok.encode(text + "assistant:", first=not ids) + content
            text = "\n"
        else:
            text += f"{role}: {content}\n"
    return ids + tok.encode(text + ("assistant:" if gen else ""), first=not ids)


def generate(url: str, ids: list[int], n: int) -> dict[str, Any]:
    body = {"input_ids": ids, "sampling_params": {"max_new_tokens": n, "temperature": 0.0}}
    return dict(httpx.post(url + "/generate", json=body, timeout=120).json())


def reply_ids(out: dict[str, Any]) -> list[int]:
    """A one-shot reply's ids as the session splices them (stop token dropped)."""
    ids, reason = list(out["output_ids"]), out["meta_info"]["finish_reason"]
    return ids[:-1] if reason.get("type") == "stop" and ids and ids[-1] == reason.get("matched") else ids


def connect(url: str, api_key: str = "unused") -> Any:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=api_key,
                                websocket_base_url=url.replace("http://", "ws://") + "/v1")  # fmt: skip
    return client.realtime.connect(model="tiny-random")


async def until(conn: Any, *types: str) -> Any:
    """The next event of one of ``types`` (errors are returned too)."""
    while True:
        ev = await asyncio.wait_for(conn.recv(), 60)
        if ev.type in types or ev.type == "error":
            return ev


async def add(conn: Any, text: str, role: str = "user", **kw: Any) -> Any:
    item: dict[str, Any] = {"type": "message", "role": role,
                            "content": [{"type": "input_text", "text": text}]}  # fmt: skip
    if "id" in kw:
        item["id"] = kw.pop("id")
    await conn.conversation.item.create(item=item, **kw)
    return await until(conn, "conversation.item.done")


async def respond(conn: Any, **params: Any) -> tuple[str, Any]:
    """response.create, then the deltas joined and the ``response.done`` event."""
    await conn.response.create(response=params) if params else await conn.response.create()
    text = ""
    while True:
        ev = await until(conn, "response.output_text.delta", "response.output_text.done", "response.done")
        assert ev.type != "error", ev
        if ev.type == "response.output_text.delta":
            text += ev.delta
        elif ev.type == "response.output_text.done":
            assert ev.text == text
        else:
            return text, ev


async def opened(conn: Any, max_tokens: int = 12) -> None:
    ev = await until(conn, "session.created")
    assert ev.type == "session.created" and ev.session.type == "realtime"
    await conn.session.update(session={"type": "realtime", "max_output_tokens": max_tokens})
    assert (await until(conn, "session.updated")).type == "session.updated"


# ---- tests -----------------------------------------------------------------------------
def test_items_streamed_item_by_item_equal_a_one_shot_generate(url: str, tok: TokenizerRoom) -> None:
    async def run() -> tuple[str, Any]:
        async with connect(url) as conn:
            await opened(conn, 16)
            await conn.session.update(session={"type": "realtime", "instructions": "answer briefly"})
            await until(conn, "session.updated")
            for p in PASSAGES:
                done = await add(conn, p)
                assert done.type == "conversation.item.done" and done.item.content[0].text == p
            await add(conn, QUESTION)
            return await respond(conn)

    flush(url)
    text, done = asyncio.run(run())
    turns = [("system", "answer briefly"), *[("user", p) for p in PASSAGES], ("user", QUESTION)]
    ids = expected_ids(tok, turns)
    r = done.response
    assert r.status in ("completed", "incomplete") and r.output[0].content[0].text == text
    assert r.usage.input_tokens == len(ids) and r.usage.output_tokens > 0
    assert r.usage.input_token_details.cached_tokens > 0  # prefilled while items arrived
    assert float(r.metadata["ttft_s"]) > 0 and r.metadata["server_ttft_s"]
    wait_idle(url)
    flush(url)
    one = generate(url, ids, 16)
    assert one["text"] == text and one["meta_info"]["completion_tokens"] == r.usage.output_tokens


def test_delete_and_replace_are_update_mode_and_stay_exact(url: str, tok: TokenizerRoom) -> None:
    async def run() -> tuple[list[int], str, Any]:
        async with connect(url) as conn:
            await opened(conn)
            ids = [(await add(conn, p)).item.id for p in PASSAGES]
            n0 = len(expected_ids(tok, [("user", p) for p in PASSAGES], gen=False))
            deadline = time.monotonic() + 60
            while stats(url)["kv_pinned_tokens"] < n0 - 1:  # the partial prefill has run
                assert time.monotonic() < deadline, stats(url)
                await asyncio.sleep(0.05)
            before = stats(url)["tokens_invalidated"]
            await conn.conversation.item.delete(item_id=ids[1])
            ev = await until(conn, "conversation.item.deleted")
            assert ev.type == "conversation.item.deleted" and ev.item_id == ids[1]
            after_delete = stats(url)["tokens_invalidated"]
            assert after_delete > before  # the deleted item's tokens and all after it: cut
            assert (await add(conn, "a replaced first passage about fish", id=ids[0])).item.id == ids[0]
            assert (await add(conn, "inserted at the head", previous_item_id="root")).type != "error"
            await add(conn, QUESTION)
            text, done = await respond(conn)
            return [after_delete - before], text, done

    flush(url)
    cut, text, done = asyncio.run(run())
    assert cut[0] > 0
    turns = [("user", "inserted at the head"), ("user", "a replaced first passage about fish"),
             ("user", PASSAGES[2]), ("user", QUESTION)]  # fmt: skip
    ids = expected_ids(tok, turns)
    assert done.response.usage.input_tokens == len(ids)
    wait_idle(url)
    flush(url)
    assert generate(url, ids, 12)["text"] == text


def test_second_turn_reuses_the_first_turns_kv(url: str, tok: TokenizerRoom) -> None:
    async def run() -> tuple[Any, Any, str]:
        async with connect(url) as conn:
            await opened(conn)
            for p in PASSAGES:
                await add(conn, p)
            _, first = await respond(conn)
            await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                      "content": [{"type": "input_text", "text": QUESTION}]})  # fmt: skip
            await conn.response.create()  # right behind the item: no time to prefill it first
            text, second = "", None
            while second is None:
                ev = await until(conn, "response.output_text.delta", "response.done")
                assert ev.type != "error", ev
                text += getattr(ev, "delta", "") if ev.type != "response.done" else ""
                second = ev if ev.type == "response.done" else None
            return first, second, text

    flush(url)
    first, second, text = asyncio.run(run())
    u1, u2 = first.response.usage, second.response.usage
    # the finished first request (prompt + reply) is in SGLang's radix tree and the
    # second turn's prompt starts with exactly its tokens (the reply's own ids)
    assert u2.input_token_details.cached_tokens >= u1.input_tokens + u1.output_tokens - 2, (u1, u2)
    wait_idle(url)
    flush(url)
    turn1 = [("user", p) for p in PASSAGES]
    out1 = generate(url, expected_ids(tok, turn1), 12)
    assert out1["text"] == first.response.output[0].content[0].text
    ids2 = expected_ids(tok, [*turn1, ("assistant", reply_ids(out1)), ("user", QUESTION)])
    assert u2.input_tokens == len(ids2)
    flush(url)
    assert generate(url, ids2, 12)["text"] == text


def test_cancel_aborts_the_running_response(url: str) -> None:
    async def run() -> tuple[Any, Any]:
        async with connect(url) as conn:
            await opened(conn, 1000)
            await add(conn, PASSAGES[0])
            await conn.response.create()
            assert (await until(conn, "response.output_text.delta")).type == "response.output_text.delta"
            await conn.response.cancel()
            done = await until(conn, "response.done")
            await add(conn, QUESTION)  # the connection goes on
            _, after = await respond(conn, max_output_tokens=4)
            return done, after

    done, after = asyncio.run(run())
    assert done.type == "response.done" and done.response.status == "cancelled"
    assert done.response.status_details.reason == "client_cancelled"
    assert done.response.usage.output_tokens < 1000
    assert after.response.status in ("completed", "incomplete") and after.response.usage.output_tokens <= 4


def test_bad_input_gets_an_error_event_and_changes_nothing(url: str, tok: TokenizerRoom) -> None:
    audio_item = {"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": "AAAA"}]}
    bad: list[tuple[str, Any]] = [
        ("invalid_json", "{not json"),
        ("invalid_event", {"type": "no.such.event"}),
        ("item_not_found", {"type": "conversation.item.delete", "item_id": "item_nope"}),
        ("item_not_found", {"type": "conversation.item.create", "previous_item_id": "item_nope",
                            "item": {"type": "message", "role": "user",
                                     "content": [{"type": "input_text", "text": "x"}]}}),
        ("unsupported_modality", {"type": "conversation.item.create", "item": audio_item}),
        ("unsupported_modality", {"type": "input_audio_buffer.append", "audio": "AAAA"}),
        ("unsupported_modality", {"type": "session.update",
                                  "session": {"type": "realtime", "output_modalities": ["audio"]}}),
        ("unsupported_modality", {"type": "response.create", "response": {"output_modalities": ["audio"]}}),
        ("response_cancel_not_active", {"type": "response.cancel"}),
        ("invalid_value", {"type": "response.create", "response": {"max_output_tokens": 4096}}),
    ]  # fmt: skip

    async def run() -> tuple[list[Any], Any, Any]:
        async with connect(url) as conn:
            await opened(conn)
            await add(conn, PASSAGES[0])
            errors = []
            for code, ev in bad:
                if isinstance(ev, str):
                    await conn._connection.send(ev)  # what a broken client sends: not JSON
                else:
                    await conn.send({**ev, "event_id": f"evt_{code}"})
                err = await until(conn, "error")
                assert err.type == "error" and err.error.code == code, (code, err)
                errors.append(err)
            await conn.response.create(response={"max_output_tokens": 1000})
            await until(conn, "response.created")
            await conn.response.create()  # while one runs
            second = await until(conn, "error")
            await conn.response.cancel()
            await until(conn, "response.done")
            await add(conn, QUESTION)
            _, done = await respond(conn, max_output_tokens=4)
            return errors, second, done

    errors, second, done = asyncio.run(run())
    assert all(e.error.type == "invalid_request_error" and e.error.message for e in errors)
    assert errors[1].error.event_id == "evt_invalid_event"
    assert second.error.code == "conversation_already_has_active_response"
    # only the two valid items and the cancelled reply are in the conversation
    assert done.response.usage.input_tokens > len(expected_ids(tok, [("user", PASSAGES[0]), ("user", QUESTION)]))


def test_disconnect_frees_the_kv(url: str) -> None:
    async def run() -> None:
        async with connect(url) as conn:  # a parked partial stream
            await opened(conn)
            for p in PASSAGES:
                await add(conn, p)
            deadline = time.monotonic() + 60
            while stats(url)["kv_pinned_tokens"] == 0:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        async with connect(url) as conn:  # mid-response
            await opened(conn, 1000)
            await add(conn, PASSAGES[0])
            await conn.response.create()
            await until(conn, "response.output_text.delta")

    asyncio.run(run())
    s = wait_idle(url)
    assert s["streams_open"] == 0 and s["streams_parked"] == 0 and s["kv_pinned_tokens"] == 0, s


class _WS:
    def __init__(self, headers: dict[str, str], protocols: list[str]) -> None:
        self.headers, self.scope = headers, {"subprotocols": protocols}


class _TM:
    class server_args:  # noqa: N801  (SGLang's attribute name)
        api_key = "sekret"


def test_api_key_from_the_bearer_header_or_the_browser_subprotocol() -> None:
    assert admit(_WS({"authorization": "Bearer sekret"}, []), _TM) is None
    assert admit(_WS({}, ["realtime", "openai-insecure-api-key.sekret"]), _TM) is None
    assert admit(_WS({"authorization": "Bearer wrong"}, []), _TM) is not None
    assert admit(_WS({}, ["realtime"]), _TM) is not None
    assert admit(_WS({}, []), type("NoKey", (), {"server_args": type("A", (), {"api_key": None})})) is None
