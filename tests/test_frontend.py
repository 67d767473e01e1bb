"""SGLang frontend programs with streamed context, against a real server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import sglang as sgl
from server_helpers import server

from srt_ext.client.frontend import StreamingEndpoint, stream_context
from srt_ext.client.rest import Client, ServerError

DOCS = [
    "The with statement wraps a block with methods defined by a context manager. ",
    "A try statement specifies exception handlers and cleanup code. ",
    "Calling a generator function returns an iterator known as a generator. ",
]


@pytest.fixture(scope="module")
def srv() -> Iterator[str]:
    with server(max_total_tokens=4096) as h:
        yield h.url


def slow_chunks(texts: list[str], delay: float = 0.05) -> Iterator[str]:
    for t in texts:
        time.sleep(delay)  # retrieval takes time; the server prefills meanwhile
        yield t


@sgl.function
def rag(s, question, chunks, mode):  # type: ignore[no-untyped-def]
    s += "Answer from the context only.\nContext:\n"
    s += stream_context(chunks, mode=mode)
    s += "Question: " + question + "\nAnswer:"
    s += sgl.gen("answer", max_tokens=6, temperature=0)


def test_append_program_equals_one_shot(srv: str) -> None:
    backend = StreamingEndpoint(srv)
    client = Client(srv)
    before = client.stats()["streams_open"]
    state = rag.run(question="What does with do?", chunks=slow_chunks(DOCS), mode="append",
                    backend=backend)
    text = state.text()
    assert text.startswith("Answer from the context only.\nContext:\n" + "".join(DOCS))
    answer = state["answer"]
    assert state.get_meta_info("answer")["completion_tokens"] == 6
    # The same program text, one shot, tokenized the same way (chunk by chunk):
    rid = client.open_stream(mode="append", text="Answer from the context only.\nContext:\n")
    for d in DOCS:
        client.send_chunk(rid, text=d)
    client.send_chunk(rid, text="Question: What does with do?\nAnswer:", final=True,
                      sampling_params={"max_new_tokens": 6, "temperature": 0})
    assert client.result(rid)["text"] == answer
    assert client.stats()["streams_open"] == before


def test_update_program_keeps_only_the_latest_version(srv: str) -> None:
    backend = StreamingEndpoint(srv)
    versions = [DOCS[0], DOCS[0] + DOCS[2], DOCS[1] + DOCS[2]]
    state = rag.run(question="q?", chunks=iter(versions), mode="update", backend=backend)
    text = state.text()
    assert DOCS[1] + DOCS[2] + "Question: q?" in text
    assert text.count(DOCS[2]) == 1 and DOCS[0] not in text


def test_streaming_run_yields_text(srv: str) -> None:
    backend = StreamingEndpoint(srv)
    state = rag.run(question="q?", chunks=iter(DOCS[:1]), mode="append", backend=backend,
                    stream=True)
    pieces = list(state.text_iter("answer"))
    assert "".join(pieces) == state["answer"] and state["answer"]


def test_sampling_params_only_with_the_final_chunk(srv: str) -> None:
    client = Client(srv)
    rid = client.open_stream(text="hello")
    with pytest.raises(ServerError) as err:
        client.send_chunk(rid, text="more", sampling_params={"max_new_tokens": 2})
    assert err.value.status == 400
    client.send_chunk(rid, text="end", final=True, sampling_params={"max_new_tokens": 3})
    assert client.result(rid)["meta_info"]["completion_tokens"] == 3


def test_flush_cache_frees_only_unlocked_prefixes(srv: str) -> None:
    client = Client(srv)
    client.generate(text="a finished request leaves its prefix cached", sampling_params={"max_new_tokens": 1})
    waiting = client.open_stream(text="a waiting stream keeps its KV pinned")
    time.sleep(0.3)  # let it prefill
    pinned = client.stats()["kv_pinned_tokens"]
    assert client.flush_cache() > 0
    st = client.stats()
    assert st["kv_evictable_tokens"] == 0 and st["kv_pinned_tokens"] == pinned
    client.abort(waiting)
