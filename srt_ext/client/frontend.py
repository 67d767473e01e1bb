"""SGLang frontend programs with streamed context.

An ordinary ``@sgl.function`` program gets streamed retrieval with one primitive.
The prompt follows the model's chat template, laid out for streaming
(``retrievers/prompt.py``: head, one piece per page, question + closing tokens)::

    layout = PromptLayout.from_model_dir(resolve_model(None))  # SmolLM2's chat template

    @sgl.function
    def rag(s, question):
        s += layout.head                                      # system turn, "Context:"
        s += stream_context(layout.piece(p.text) for p in pages(question))  # flows in
        s += layout.tail(question)                            # question, assistant header
        s += sgl.gen("answer", max_tokens=64)                 # starts when retrieval ends

    sgl.set_default_backend(StreamingEndpoint("http://127.0.0.1:30000"))
    state = rag.run(question="...")          # .run(stream=True) works too

How it maps onto SGLang's interpreter, without patching it: ``stream_context``
is an ``SglExprList`` whose first element is ``SglCommitLazy`` (the interpreter
hands its executor to ``backend.commit_lazy_operations``: we open a server
stream with the text so far) and whose remaining elements are produced lazily,
one text fill per retrieved chunk, each sent to the server as it arrives. The
program's thread waits on retrieval exactly as it would have, but the server
prefills meanwhile. ``sgl.gen`` then sends whatever text came after the context
as the *final* chunk, with the gen's sampling parameters, and reads the answer.

Append chunks (a crawler) extend the stream; update chunks (a vector search)
each replace the context, so the program text keeps only the latest version.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from srt_ext.client.rest import Client

_tls = threading.local()  # the executor whose stream_context is being run


@dataclass
class _OpenStream:
    rid: str
    mode: Literal["append", "update"]
    sent: str  # program text already in the server stream (append) / its prefix (update)
    context_start: int  # where the streamed context starts in the program text
    context: str = ""  # latest context (update mode)
    acks: list[Any] = field(default_factory=list)


def _iterate(chunks: Iterable[Any] | AsyncIterator[Any]) -> Iterator[tuple[str, bool]]:
    """Chunks as ``(text, final)`` pairs; async iterators are driven on a private loop."""
    if hasattr(chunks, "__aiter__"):
        loop = asyncio.new_event_loop()
        ait = chunks.__aiter__()  # type: ignore[union-attr]
        try:
            while True:
                try:
                    item = loop.run_until_complete(ait.__anext__())
                except StopAsyncIteration:
                    return
                yield _pair(item)
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
    else:
        for item in chunks:  # type: ignore[union-attr]
            yield _pair(item)


def _pair(item: Any) -> tuple[str, bool]:
    if isinstance(item, str):
        return item, False
    text, final = item
    return str(text), bool(final)


def stream_context(
    chunks: Iterable[Any] | AsyncIterator[Any], mode: Literal["append", "update"] = "append"
) -> Any:
    """An expression that streams retrieved context into the running request.

    ``chunks`` yields texts or ``(text, final)`` pairs (``retrievers.stream``'s
    ``crawl_chunks`` / ``search_chunks``), sync or async. In ``update`` mode each
    chunk is the whole current context.
    """
    from sglang.lang.ir import SglExprList

    return SglExprList(_LazyContext(chunks, mode))  # type: ignore[arg-type]


class _LazyContext:
    """The expression list behind ``stream_context``.

    SGLang iterates an ``SglExprList`` twice: once when it is submitted (in the
    program's thread, looking for variables to create events for) and once when
    the executor runs it. Only the second pass follows ``SglCommitLazy``, which
    hands us the executor; the first pass therefore ends right there and never
    touches the retrieval source.
    """

    def __init__(self, chunks: Iterable[Any] | AsyncIterator[Any], mode: str) -> None:
        self.chunks, self.mode = chunks, mode

    def __iter__(self) -> Iterator[Any]:
        from sglang.lang.ir import SglCommitLazy, SglConstantText

        _tls.executor = None
        yield SglCommitLazy()
        ex = getattr(_tls, "executor", None)
        if ex is None:  # the submit-time scan, not the execution
            return
        _tls.executor = None
        backend: StreamingEndpoint = ex.backend
        stream = backend._open(ex, self.mode)  # type: ignore[arg-type]
        for text, _final in _iterate(self.chunks):
            fill = backend._push(ex, stream, text)
            if fill:
                yield SglConstantText(fill)


class StreamingEndpoint:
    """A ``RuntimeEndpoint``-compatible backend for a stream2llm server."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 600.0) -> None:
        from sglang.lang.backend.base_backend import BaseBackend
        from sglang.lang.chat_template import get_chat_template

        BaseBackend.__init__(self)  # type: ignore[arg-type]
        self.support_concate_and_append = False
        self.chat_template = get_chat_template("default")
        self.base_url = base_url.rstrip("/")
        self.client = Client(self.base_url, api_key=api_key, timeout=timeout)
        self._streams: dict[int, _OpenStream] = {}

    # ---- BaseBackend surface used by the interpreter -----------------------------
    def get_model_name(self) -> str:
        return "stream2llm"

    def get_chat_template(self) -> Any:
        return self.chat_template

    def begin_program(self, s: Any) -> None:
        return None

    def end_program(self, s: Any) -> None:
        for ex in s if isinstance(s, list) else [s]:
            stream = self._streams.pop(id(ex), None)
            if stream is not None:  # the program ended without a gen: free the KV
                self.client.abort(stream.rid)

    def commit_lazy_operations(self, s: Any) -> None:
        _tls.executor = s

    def cache_prefix(self, prefix_str: str) -> None:
        return None

    def generate(self, s: Any, sampling_params: Any, **_: Any) -> tuple[str, dict[str, Any]]:
        rid = self._finalize(s, sampling_params)
        if rid is None:
            out = self.client.generate(text=s.text_, sampling_params=_params(sampling_params))
        else:
            out = self.client.result(rid)
        return out["text"], out.get("meta_info", {})

    def generate_stream(self, s: Any, sampling_params: Any, **_: Any) -> Iterator[tuple[str, Any]]:
        rid = self._finalize(s, sampling_params)
        if rid is None:
            rid = self.client.open_stream(
                mode="append", sampling_params=_params(sampling_params), text=s.text_, final=True
            )
        pos = 0
        for event in self.client.stream_result(rid):
            text = event.get("text", "")
            yield text[pos:], event.get("meta_info", {})
            pos = len(text)

    def select(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("sgl.select is not supported by the streaming endpoint")

    # ---- streamed context -----------------------------------------------------
    def _open(self, ex: Any, mode: Literal["append", "update"]) -> _OpenStream:
        if id(ex) in self._streams:
            raise RuntimeError("one stream_context per generation: call sgl.gen first")
        prefix = ex.text_
        rid = self.client.open_stream(mode=mode, text=prefix if mode == "append" else None)
        stream = _OpenStream(rid, mode, prefix, len(prefix))
        self._streams[id(ex)] = stream
        return stream

    def _push(self, ex: Any, stream: _OpenStream, text: str) -> str:
        """Send one chunk; returns the text to add to the program."""
        if stream.mode == "append":
            stream.acks.append(self.client.send_chunk(stream.rid, text=text))
            stream.sent += text
            return text
        # update: the program's context is replaced by the new version
        head = ex.text_[: stream.context_start]
        ex.text_ = head
        stream.context = text
        stream.acks.append(self.client.send_chunk(stream.rid, text=head + text))
        return text

    def _finalize(self, s: Any, sampling_params: Any) -> str | None:
        stream = self._streams.pop(id(s), None)
        if stream is None:
            return None
        params = _params(sampling_params)
        if stream.mode == "append":
            if not s.text_.startswith(stream.sent):
                raise RuntimeError("program text changed under a streamed context")
            rest = s.text_[len(stream.sent) :]
            self.client.send_chunk(stream.rid, text=rest, final=True, sampling_params=params)
        else:
            self.client.send_chunk(stream.rid, text=s.text_, final=True, sampling_params=params)
        return stream.rid


def _params(sampling_params: Any) -> dict[str, Any]:
    if sampling_params is None:
        return {}
    if isinstance(sampling_params, dict):
        return sampling_params
    kw = sampling_params.to_srt_kwargs()
    return {k: v for k, v in kw.items() if v is not None and k in _SUPPORTED}


_SUPPORTED = {"max_new_tokens", "temperature", "top_p", "top_k", "stop", "seed"}
