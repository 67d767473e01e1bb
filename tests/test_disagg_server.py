"""Prefill/decode split behind the real REST server: the prefill server (the one
public API) hands finished prefills to a decode server over ZMQ, and clients get
the same outputs as from the single server."""

from __future__ import annotations

import pytest

from srt_ext.disagg.serve import launch_disaggregated
from srt_ext.engines.reference.model_store import TINY_MODEL
from srt_ext.launch import launch_server

pytestmark = pytest.mark.timeout(240)
SP = {"max_new_tokens": 5, "temperature": 0.0, "ignore_eos": True}
TEXTS = ["the river runs north past the old stone bridge", "science theory data model"]


def outputs(client) -> list[list[int]]:
    outs = []
    rid = client.open_stream("append", SP, text=TEXTS[0])
    client.send_chunk(rid, text=" and the village", final=True)
    outs.append(client.result(rid)["output_ids"])
    rid = client.open_stream("update", SP, text=TEXTS[1])
    client.send_chunk(rid, text=TEXTS[1] + " value rate cost", final=True)
    outs.append([o["output_ids"] for o in client.stream_result(rid)][-1])
    outs.append(client.generate(text=TEXTS[0], sampling_params=SP)["output_ids"])
    return outs


def test_split_server_matches_single_server():
    with launch_server(model_path=TINY_MODEL, max_total_tokens=2048, threads=1) as h, h.client() as c:
        expected = outputs(c)
    assert all(len(o) == 5 for o in expected)
    with launch_disaggregated(model_path=TINY_MODEL, max_total_tokens=2048, threads=1, decode_tokens=2048) as (h, dec):
        with h.client() as c:
            assert outputs(c) == expected
            stats = c.stats()
    assert stats["disagg_handoffs"] == 3 and dec.stats["imported"] == 3
    assert dec.health()["active"] == 0
