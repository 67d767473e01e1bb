"""The validation's simulator and replay read one trace the same way (fast: no server)."""

from __future__ import annotations

from itertools import pairwise

import pytest

from eval.replay_query import whole_input
from eval.sim import non_streaming
from eval.validate_trace import Case, build, scale_query
from eval.workloads import generate
from stream2llm.lcp import common_prefix_len as _lcp


@pytest.fixture(scope="module")
def tok():
    from srt_ext.api.tokenizer import TokenizerRoom
    from srt_ext.engines.reference.tiny_model import ensure_tiny_model

    return TokenizerRoom(ensure_tiny_model())


@pytest.mark.parametrize("workload", ["crawler", "anns"])
def test_sim_and_replay_see_the_same_trace(tok, workload: str) -> None:
    case = Case("t", workload, qps=2.0, num_queries=6, seed=5, token_scale=0.1, max_tokens=900,
                delay_multiplier=2.0)
    text_qs, sim_qs = build(case, tok)
    drawn = generate(workload, qps=2.0, num_queries=6, seed=5, delay_multiplier=2.0)
    assert len(text_qs) == len(sim_qs) == 6
    for d, t, s in zip(drawn, text_qs, sim_qs, strict=True):
        # same arrivals and chunk times (every delay stretched x2, the first one too)
        assert t.arrival_s == s.arrival_s == d.arrival_s
        assert [c.t_s for c in t.chunks] == [c.t_s for c in s.chunks]
        assert t.chunks[0].t_s == pytest.approx(2 * d.chunks[0].t_s)
        assert [c.final for c in t.chunks] == [c.final for c in s.chunks] == [c.final for c in d.chunks]
        # the simulator's ids are what the server's API room makes of the replayed text
        for j, (tc, sc) in enumerate(zip(t.chunks, s.chunks, strict=True)):
            first = t.mode == "update" or j == 0
            assert list(sc.token_ids) == tok.encode(tc.text, first=first)
            assert len(sc.token_ids) > 0
        # the non-streaming baseline: the replay's whole text is the simulator's whole input
        assert tok.encode(whole_input(t)["text"], first=True) == list(non_streaming(s).chunks[0].token_ids)
        assert len(s.final_token_ids()) <= case.max_tokens


def test_scaling_keeps_update_prefixes_and_times() -> None:
    q = generate("anns", qps=1.0, num_queries=3, seed=2)[2]
    s = scale_query(q, 0.1, 10**6)
    assert [c.t_s for c in s.chunks] == [c.t_s for c in q.chunks]
    pairs = zip(pairwise(q.chunks), pairwise(s.chunks), strict=True)
    for (a, b), (x, y) in pairs:
        lcp = _lcp(a.token_ids, b.token_ids)
        assert _lcp(x.token_ids, y.token_ids) >= -(-lcp // 10)  # shared prefixes stay shared
        assert len(y.token_ids) == -(-len(b.token_ids) // 10)
    with pytest.raises(ValueError):
        scale_query(q, 0.0, 100)
