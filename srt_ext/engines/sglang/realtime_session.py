"""One ``/v1/realtime`` connection: the conversation and its live stream.

Why an update-mode stream per turn: the session holds the items and, on every
change, sends the whole conversation (``realtime_prompt.prompt_ids``) to one
update-mode stream of ``StreamFrontend``. An appended item has the old version
as its longest common prefix, so its tokens are prefilled while the client is
still adding items and nothing is recomputed; a deleted or replaced item cuts
the KV at the LCP and frees the rest (update mode's rule). ``response.create``
is the stream's final chunk (the version with the generation prompt). The
finished request's prompt + output stay in SGLang's radix tree, and the next
turn's stream, whose ids start with exactly those tokens, matches them.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from srt_ext.engines.sglang.frontend import HttpStream, StreamFrontend, StreamHTTPError
from srt_ext.engines.sglang.realtime_events import (
    RealtimeError,
    Settings,
    check_max_tokens,
    check_modalities,
    error_event,
    event,
    item_json,
    new_id,
    parse_item,
    usage,
)
from srt_ext.engines.sglang.realtime_prompt import Encode, Item, Render, prompt_ids

logger = logging.getLogger(__name__)
Send = Callable[[dict[str, Any]], Awaitable[None]]
AUDIO_EVENTS = ("input_audio_buffer.", "output_audio_buffer.")
# what max_output_tokens "inf" means: SGLang reserves KV for max_new_tokens when it
# admits a request, so "the rest of the context" would never be admitted on a pool
# no larger than the context; a bounded default keeps "inf" servable
INF_OUTPUT_TOKENS = 1024


@dataclass(eq=False)
class Response:
    """A running response: its request (the stream made final) and its reply item."""

    id: str
    item: Item
    stream: HttpStream
    max_output_tokens: int | str
    created_t: float  # response.create received (TTFT starts here)
    prefilled: int = 0  # input KV already computed when response.create arrived (the ack)
    cancelled: bool = False
    task: asyncio.Task | None = None


@dataclass(eq=False)
class RealtimeSession:
    fe: StreamFrontend
    send: Send
    render: Render
    encode: Encode
    context_len: int
    settings: Settings
    id: str = field(default_factory=lambda: new_id("sess"))
    items: list[Item] = field(default_factory=list)
    live: HttpStream | None = None  # the partial stream holding the conversation's KV
    live_ids: list[int] = field(default_factory=list)
    response: Response | None = None
    dirty: bool = False  # items changed while a response ran: sync when it ends
    capacity: int | None = None  # min(context, KV pool) tokens: input + output must fit
    client: str = ""  # limits.client_key of the connection: --max-streams-per-client
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    # ---- the prompt and its stream ------------------------------------------------------
    def prompt(self, gen: bool, instructions: str | None = None) -> list[int]:
        ins = self.settings.instructions if instructions is None else instructions
        head = [Item("instructions", "system", ins)] if ins else []
        return prompt_ids(head + self.items, gen, self.render, self.encode)

    def sampling(self, n_input: int, max_output_tokens: int | str) -> dict[str, Any]:
        limit = self.capacity or self.context_len
        if max_output_tokens == "inf":
            n = min(INF_OUTPUT_TOKENS, limit - n_input)
        else:
            n = int(max_output_tokens)
            if n_input + n > limit:
                raise RealtimeError("invalid_value", f"the conversation ({n_input} tokens) + "
                                    f"max_output_tokens ({n}) exceeds the {limit} tokens of the "
                                    "context / KV pool", "max_output_tokens")  # fmt: skip
        return {"max_new_tokens": max(1, n), "temperature": self.settings.temperature}

    def _usable(self) -> bool:
        st = self.live
        return st is not None and not st.done and not st.final and self.fe.streams.get(st.rid) is st

    async def sync(self) -> None:
        """Send the conversation's current version to the live stream (opened on
        the first item; replaced after a response or when the server reaped it)."""
        if self.response is not None:
            self.dirty = True
            return
        ids = self.prompt(gen=False)
        if self._usable() and ids == self.live_ids:
            return
        if not ids:
            await self.release()
            return
        try:
            if self._usable():
                await self.fe.chunk(self.live.rid, None, ids, False, "update", None)
            else:
                self._drop_live()
                rid = f"rt-{uuid.uuid4().hex}"
                await self.fe.open(rid, "update", self.sampling(len(ids), 1), ids, False, **self._client())
                self.live = self.fe.streams[rid]
                self.live.readers += 1  # the connection keeps it alive (no idle reaping)
        except StreamHTTPError as exc:
            raise RealtimeError("invalid_value" if exc.status < 500 else "server_error", exc.reason,
                                type_="invalid_request_error" if exc.status < 500 else "server_error") from None  # fmt: skip
        self.live_ids = ids

    def _client(self) -> dict[str, str]:
        """The per-client stream limit: a frontend with the HTTP policy (``--api-key-file``,
        ``--max-streams-per-client``: http_policy.py) counts the session's stream against
        its client, as the REST routes do; an older frontend takes no ``client``."""
        return {"client": self.client} if self.client and hasattr(self.fe, "policy") else {}

    def _drop_live(self) -> None:
        if self.live is not None:
            self.live.readers -= 1
        self.live, self.live_ids = None, []

    async def release(self) -> None:
        """Abort the live stream: its KV (pinned while parked) is freed."""
        st = self.live
        self._drop_live()
        if st is not None and not st.done:
            try:
                await self.fe.abort(st.rid)
            except StreamHTTPError:
                pass  # already gone (finished or reaped)

    # ---- client events ----------------------------------------------------------------
    async def handle(self, ev: Any) -> None:
        """Apply one client event; a refused one gets an ``error`` event and changes nothing."""
        eid = ev.get("event_id") if isinstance(ev, dict) else None
        try:
            if not isinstance(ev, dict) or not isinstance(ev.get("type"), str):
                raise RealtimeError("invalid_event", "an event must be an object with a string 'type'")
            kind = ev["type"]
            handler = HANDLERS.get(kind)
            if handler is None:
                if kind.startswith(AUDIO_EVENTS):
                    raise RealtimeError("unsupported_modality", f"{kind}: audio is not supported: "
                                        "this server is text-only", "type")  # fmt: skip
                raise RealtimeError("invalid_event", f"unknown event type {kind!r}", "type")
            async with self.lock:
                await handler(self, ev)
        except RealtimeError as exc:
            await self.send(error_event(exc, eid))

    async def session_update(self, ev: dict[str, Any]) -> None:
        new = self.settings.update(ev.get("session"))
        old, self.settings = self.settings, new
        try:
            await self.sync()  # instructions are the head of the prompt
        except RealtimeError:
            self.settings = old
            raise
        await self.send(event("session.updated", session=new.json(self.id)))

    def index(self, item_id: Any, param: str) -> int:
        for i, it in enumerate(self.items):
            if it.id == item_id:
                return i
        raise RealtimeError("item_not_found", f"no item with id {item_id!r}", param)

    async def item_create(self, ev: dict[str, Any]) -> None:
        item, prev = parse_item(ev.get("item")), ev.get("previous_item_id")
        old = list(self.items)
        at = next((i for i, it in enumerate(self.items) if it.id == item.id), None)
        if at is not None:  # an existing id: replaced in place (update: KV cut at the LCP)
            if self.items[at].status == "in_progress":
                raise RealtimeError("invalid_value", f"item {item.id} is being generated", "item.id")
            self.items[at] = item
        elif prev is None:
            self.items.append(item)
        elif prev == "root":
            self.items.insert(0, item)
        else:
            self.items.insert(self.index(prev, "previous_item_id") + 1, item)
        try:
            await self.sync()
        except RealtimeError:
            self.items = old
            raise
        pos = self.items.index(item)
        before = self.items[pos - 1].id if pos else None
        await self.send(event("conversation.item.added", previous_item_id=before, item=item_json(item)))
        await self.send(event("conversation.item.done", previous_item_id=before, item=item_json(item)))

    async def item_delete(self, ev: dict[str, Any]) -> None:
        at = self.index(ev.get("item_id"), "item_id")
        if self.items[at].status == "in_progress":
            raise RealtimeError("invalid_value", "the item of a running response cannot be deleted "
                                "(send response.cancel)", "item_id")  # fmt: skip
        old = list(self.items)
        gone = self.items.pop(at)
        try:
            await self.sync()
        except RealtimeError:
            self.items = old
            raise
        await self.send(event("conversation.item.deleted", item_id=gone.id))

    async def item_retrieve(self, ev: dict[str, Any]) -> None:
        item = self.items[self.index(ev.get("item_id"), "item_id")]
        await self.send(event("conversation.item.retrieved", item=item_json(item)))

    async def response_create(self, ev: dict[str, Any]) -> None:
        t0 = time.monotonic()
        if self.response is not None:
            raise RealtimeError("conversation_already_has_active_response",
                                f"response {self.response.id} is still in progress")  # fmt: skip
        params = ev.get("response") or {}
        if not isinstance(params, dict):
            raise RealtimeError("invalid_value", "response must be an object", "response")
        check_modalities(params.get("output_modalities"), "response.output_modalities")
        check_max_tokens(params.get("max_output_tokens"), "response.max_output_tokens")
        if params.get("conversation", "auto") != "auto" or params.get("input") is not None:
            raise RealtimeError("unsupported_parameter", "out-of-band responses (conversation / "
                                "input) are not supported", "response.conversation")  # fmt: skip
        ins = params.get("instructions")
        if ins is not None and not isinstance(ins, str):
            raise RealtimeError("invalid_value", "instructions must be a string", "response.instructions")
        limit = params.get("max_output_tokens") or self.settings.max_output_tokens
        ids = self.prompt(gen=True, instructions=ins)
        if self.capacity is None:
            pool = (await self.fe.stats()).get("kv_capacity_tokens") or self.context_len
            self.capacity = min(self.context_len, int(pool))
        sampling = self.sampling(len(ids), limit)
        try:
            if self._usable():
                ack = await self.fe.chunk(self.live.rid, None, ids, True, "update", sampling)
                st = self.live
            else:
                self._drop_live()
                rid = f"rt-{uuid.uuid4().hex}"
                ack = await self.fe.open(rid, "update", sampling, ids, True, **self._client())
                st = self.fe.streams.get(rid) or self.fe.get(rid)
                st.readers += 1
        except StreamHTTPError as exc:
            raise RealtimeError("invalid_value", exc.reason) from None
        self.live, self.live_ids = None, []  # the stream is the response's now
        item = Item(new_id("item"), "assistant", "", status="in_progress")
        resp = self.response = Response(new_id("resp"), item, st, limit, t0, ack.cached_tokens)
        self.items.append(item)
        await self.send(event("response.created", response=self.response_json(resp, "in_progress")))
        await self.send(event("response.output_item.added", response_id=resp.id, output_index=0,
                              item=item_json(item)))  # fmt: skip
        before = self.items[-2].id if len(self.items) > 1 else None
        await self.send(event("conversation.item.added", previous_item_id=before, item=item_json(item)))
        await self.send(event("response.content_part.added", response_id=resp.id, item_id=item.id,
                              output_index=0, content_index=0, part={"type": "text", "text": ""}))  # fmt: skip
        resp.task = asyncio.create_task(self._run(resp))

    async def response_cancel(self, ev: dict[str, Any]) -> None:
        resp = self.response
        want = ev.get("response_id")
        if resp is None or (want is not None and want != resp.id):
            raise RealtimeError("response_cancel_not_active", "there is no active response to cancel")
        resp.cancelled = True
        try:
            await self.fe.abort(resp.stream.rid)
        except StreamHTTPError:
            pass  # finished meanwhile: the response completes as usual

    # ---- a running response -------------------------------------------------------------
    async def _run(self, resp: Response) -> None:
        """Stream the reply's text deltas, then close the response (``response.done``)."""
        st, item, sent, first_t = resp.stream, resp.item, "", None
        try:
            while True:
                changed, done = st.changed, st.done
                text = (st.out or {}).get("text") or ""
                if len(text) > len(sent) and text.startswith(sent):
                    first_t = first_t or time.monotonic()
                    await self.send(event("response.output_text.delta", response_id=resp.id,
                                          item_id=item.id, output_index=0, content_index=0,
                                          delta=text[len(sent):]))  # fmt: skip
                    sent = text
                if done:
                    break
                await changed.wait()
            await self._finish(resp, sent, first_t)
        except Exception:  # noqa: BLE001  (the client went away mid-send, or a bug: log it)
            logger.exception("realtime response %s failed", resp.id)
        finally:
            st.readers -= 1
            if self.response is resp:
                self.response = None

    async def _finish(self, resp: Response, text: str, first_t: float | None) -> None:
        st, item = resp.stream, resp.item
        out = st.out or {"output_ids": [], "meta_info": {}}
        meta = dict(out.get("meta_info") or {})
        reason = meta.get("finish_reason") or {}
        ids = list(out.get("output_ids") or [])
        if reason.get("type") == "stop" and ids and ids[-1] == reason.get("matched"):
            ids = ids[:-1]  # the stop token: the template's own end-of-turn follows the reply
        if resp.cancelled or reason.get("type") == "abort" or st.error is not None:
            status = "cancelled" if resp.cancelled else "failed"
            details = {"type": status, "reason": "client_cancelled"} if resp.cancelled else \
                {"type": "failed", "error": {"type": "server_error", "code": str(st.error.reason if st.error else "abort")}}  # fmt: skip
        elif reason.get("type") == "length":
            status, details = "incomplete", {"type": "incomplete", "reason": "max_output_tokens"}
        else:
            status, details = "completed", None
        async with self.lock:
            item.text, item.output_ids = text, ids
            item.status = "completed" if status == "completed" else "incomplete"
            self.response = None
            meta["ttft_s"] = None if first_t is None else first_t - resp.created_t
            await self.send(event("response.output_text.done", response_id=resp.id, item_id=item.id,
                                  output_index=0, content_index=0, text=text))  # fmt: skip
            await self.send(event("response.content_part.done", response_id=resp.id, item_id=item.id,
                                  output_index=0, content_index=0, part={"type": "text", "text": text}))  # fmt: skip
            await self.send(event("response.output_item.done", response_id=resp.id, output_index=0,
                                  item=item_json(item)))  # fmt: skip
            await self.send(event("conversation.item.done", item=item_json(item)))
            await self.send(event("response.done", response=self.response_json(
                resp, status, details, [item_json(item)], meta)))  # fmt: skip
            if self.dirty:
                self.dirty = False
                try:
                    await self.sync()
                except RealtimeError as exc:
                    await self.send(error_event(exc, None))

    def response_json(self, resp: Response, status: str, details: dict[str, Any] | None = None,
                      output: list[dict[str, Any]] | None = None,
                      meta: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        """The response object; a finished one has ``usage`` and, in ``metadata``
        (string values, as the API's metadata), ``ttft_s`` (response.create
        received -> first text delta sent, this process's clock),
        ``server_ttft_s`` (SGLang's request: final chunk -> first token), and
        the two parts of ``cached_tokens``: ``prefilled_tokens`` (computed while
        items arrived) and ``radix_cached_tokens`` (SGLang's own count of input
        found in its radix tree, e.g. a previous turn)."""
        out: dict[str, Any] = {"object": "realtime.response", "id": resp.id, "status": status,
                               "status_details": details, "output": output or [],
                               "conversation_id": self.id, "output_modalities": ["text"],
                               "max_output_tokens": resp.max_output_tokens}  # fmt: skip
        if meta is not None:
            res = self.fe.result(resp.stream) if resp.stream.error is None else {"meta_info": {}}
            server = res["meta_info"].get("ttft_s")
            out["usage"] = usage(meta, resp.prefilled)
            out["metadata"] = {"ttft_s": _fmt(meta.get("ttft_s")), "server_ttft_s": _fmt(server),
                               "prefilled_tokens": str(resp.prefilled),
                               "radix_cached_tokens": str(int(meta.get("cached_tokens") or 0))}  # fmt: skip
        return out

    # ---- the end of the connection ------------------------------------------------------
    async def close(self) -> None:
        """The client went away: abort the response and the live stream (frees their KV)."""
        resp = self.response
        if resp is not None:
            resp.cancelled = True
            try:
                await self.fe.abort(resp.stream.rid)
            except StreamHTTPError:
                pass
            if resp.task is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(resp.task), 30)
                except (TimeoutError, asyncio.CancelledError):
                    resp.task.cancel()
        await self.release()


def _fmt(v: Any) -> str:
    return "" if v is None else f"{float(v):.6f}"


HANDLERS: dict[str, Callable[[RealtimeSession, dict[str, Any]], Awaitable[None]]] = {
    "session.update": RealtimeSession.session_update,
    "conversation.item.create": RealtimeSession.item_create,
    "conversation.item.delete": RealtimeSession.item_delete,
    "conversation.item.retrieve": RealtimeSession.item_retrieve,
    "response.create": RealtimeSession.response_create,
    "response.cancel": RealtimeSession.response_cancel,
}
