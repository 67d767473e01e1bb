"""OpenAI-compatible one-shot routes (/v1/completions, /v1/chat/completions,
/v1/models), so OpenAI SDKs and benchmark tools work unchanged. They are thin
adapters over ``Service.generate`` and ``reading.respond`` (so a client that leaves
aborts its request, streaming or not): streaming input is only on /v1/streams."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request

from srt_ext.api.models import ChatCompletionRequest, CompletionRequest, openai_sampling
from srt_ext.api.reading import respond
from srt_ext.api.req_state import ReqState, WorkerError
from srt_ext.api.service import Service


def _finish_reason(st: ReqState) -> str | None:
    if st.finish_reason is None:
        return None
    return "stop" if st.finish_reason.get("type") == "stop" else "length"


def _usage(st: ReqState) -> dict[str, int]:
    p = st.finish.prompt_tokens if st.finish else st.input_tokens
    return {"prompt_tokens": p, "completion_tokens": len(st.output_ids),
            "total_tokens": p + len(st.output_ids)}  # fmt: skip


async def _deltas(svc: Service, st: ReqState,
                  changes: AsyncIterator[bool]) -> AsyncIterator[tuple[str, bool]]:  # fmt: skip
    """(new text, done) each time the request's output changes."""
    sent = ""
    async for done in changes:
        if st.error is not None:
            raise st.error
        text = svc.text(st)
        # hold back a trailing replacement char: a multi-byte token may be half-decoded
        stable = text if done else text.rstrip("\ufffd")
        if len(stable) > len(sent) or done:
            yield stable[len(sent):], done
            sent = stable


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def add_openai_routes(app: FastAPI, svc_of: Callable[[Request], Service], model_name: str) -> None:
    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model",
                                            "owned_by": "stream2llm"}]}  # fmt: skip

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        svc = svc_of(request)
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise WorkerError(400, "batched prompts are not supported")
            prompt = prompt[0]
        text: str | None = None
        ids: list[int] | None = None
        if isinstance(prompt, str):
            text = prompt
        else:  # token ids (a list of strings was handled above; an empty one is [])
            ids = [t for t in prompt if isinstance(t, int)]
        st = await svc.generate(text, ids, openai_sampling(body, body.max_tokens))
        rid, created = f"cmpl-{st.rid}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": model_name}

        async def frames(changes: AsyncIterator[bool]) -> AsyncIterator[bytes]:
            try:
                async for delta, done in _deltas(svc, st, changes):
                    fr = _finish_reason(st) if done else None
                    yield _sse({**head, "choices": [{"index": 0, "text": delta,
                                                     "logprobs": None, "finish_reason": fr}]})  # fmt: skip
            except WorkerError as exc:
                yield _sse({"error": {"message": exc.reason, "code": exc.status}})
            yield b"data: [DONE]\n\n"

        def shape(st: ReqState) -> dict[str, Any]:
            out = svc.take_result(st)
            return {**head, "choices": [{"index": 0, "text": out["text"], "logprobs": None,
                                         "finish_reason": _finish_reason(st)}], "usage": _usage(st)}  # fmt: skip

        return await respond(svc, st, request, abort_on_disconnect=True, shape=shape,
                             frames=frames if body.stream else None)  # fmt: skip

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest, request: Request) -> Any:
        svc = svc_of(request)
        prompt = svc.tok.chat_prompt([msg.model_dump() for msg in body.messages])
        max_tokens = body.max_completion_tokens or body.max_tokens or 16
        st = await svc.generate(prompt, None, openai_sampling(body, max_tokens))
        rid, created = f"chatcmpl-{st.rid}", int(time.time())
        head = {"id": rid, "created": created, "model": model_name}

        async def frames(changes: AsyncIterator[bool]) -> AsyncIterator[bytes]:
            chunk = {**head, "object": "chat.completion.chunk"}
            yield _sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant"},
                                              "finish_reason": None}]})  # fmt: skip
            try:
                async for delta, done in _deltas(svc, st, changes):
                    fr = _finish_reason(st) if done else None
                    d = {"content": delta} if delta else {}
                    yield _sse({**chunk, "choices": [{"index": 0, "delta": d,
                                                      "finish_reason": fr}]})  # fmt: skip
            except WorkerError as exc:
                yield _sse({"error": {"message": exc.reason, "code": exc.status}})
            yield b"data: [DONE]\n\n"

        def shape(st: ReqState) -> dict[str, Any]:
            message = {"role": "assistant", "content": svc.take_result(st)["text"]}
            return {**head, "object": "chat.completion", "usage": _usage(st),
                    "choices": [{"index": 0, "message": message,
                                 "finish_reason": _finish_reason(st)}]}  # fmt: skip

        return await respond(svc, st, request, abort_on_disconnect=True, shape=shape,
                             frames=frames if body.stream else None)  # fmt: skip
