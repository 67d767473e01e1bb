"""LCP profiles of update traces and recorded-trace expansion for the simulator."""

from __future__ import annotations

import pytest

from eval.lcp_profile import lcp_profile
from eval.record_traces import expand
from stream2llm.trace import Chunk, Query


def _q(qid: str, versions: list[list[int]], mode: str = "update") -> Query:
    chunks = tuple(Chunk(0.1 * i, tuple(v), None, i == len(versions) - 1)
                   for i, v in enumerate(versions))
    return Query(qid, 0.0, mode, chunks)  # type: ignore[arg-type]


def test_lcp_profile_counts_prefix_of_the_new_version() -> None:
    a = _q("a", [[1, 2, 3, 4], [1, 2, 9, 9, 9, 9, 9, 9], [1, 2, 9, 9, 9, 9, 9, 5]])
    b = _q("b", [[7, 7]])  # one version: no update
    p = lcp_profile([a, b])
    assert p.updates == 2
    assert p.mean == pytest.approx((2 / 8 + 7 / 8) / 2)
    assert p.final_mean == pytest.approx(7 / 8) and p.final_same == 0.0
    assert p.changed_mean == pytest.approx(p.mean)
    rep = lcp_profile([_q("c", [[1, 2], [1, 3, 4, 5], [1, 3, 4, 5]])])
    assert rep.final_same == 1.0 and rep.changed_mean == pytest.approx(1 / 4)
    assert p.final_weighted == pytest.approx(7 / (8 + 2))
    assert p.versions_mean == 2.0 and p.final_tokens_mean == 5.0


def test_expand_keeps_structure_scales_tokens_and_retimes() -> None:
    rec = [_q("a", [[1, 2, 3, 4] * 50, [1, 2, 3, 5] * 50]), _q("b", [[8] * 300])]
    qs = expand(rec, "anns", qps=2.0, num_queries=5, seed=1, delay_multiplier=3.0)
    assert [q.meta["recorded"] for q in qs] == ["a", "b", "a", "b", "a"]
    f = qs[0].meta["token_factor"]
    assert f == round(13006 / 250)
    v0, v1 = (c.token_ids for c in qs[0].chunks)
    assert len(v0) == 200 * f and len(v1) == 200 * f
    # the LCP scales by exactly f (first difference at token 3 of the recorded pair)
    lcp = next(i for i, (x, y) in enumerate(zip(v0, v1, strict=True)) if x != y)
    assert lcp == 3 * f
    # copies of a recorded query get disjoint ids; times are increasing, arrivals Poisson
    assert not set(qs[0].chunks[0].token_ids) & set(qs[2].chunks[0].token_ids)
    assert all(b.t_s >= a.t_s for q in qs for a, b in zip(q.chunks, q.chunks[1:], strict=False))
    assert [q.arrival_s for q in qs] == sorted(q.arrival_s for q in qs)
    with pytest.raises(ValueError):
        expand([], "anns", 1.0, 1, 0)


def test_record_traces_cli_summarizes_and_simulates(tmp_path, capsys) -> None:
    """The command end to end on traces already recorded (`--no-record`): it needs no
    server on any engine (retrievers + simulator), prints each update trace's LCP
    profile next to the synthetic one, the crawl summary, and the simulated ratios."""
    from stream2llm.cli import main
    from stream2llm.trace import write_trace

    upd = [_q(f"u{i}", [[1, 2, 3, 4] * 20, [1, 2, 3, 5] * 20, [1, 2, 3, 5] * 20])
           for i in range(3)]  # fmt: skip
    crawl = [_q("c0", [[7] * 30, [8] * 40], mode="append")]
    write_trace(tmp_path / "anns-mine.jsonl", upd)
    write_trace(tmp_path / "crawler-site.jsonl", crawl)
    argv = ["record-traces", "--out", str(tmp_path), "--no-record", "--synthetic-queries", "30",
            "--sim-qps", "2", "--sim-queries", "12"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    mine = next(ln for ln in lines if ln.startswith("anns-mine"))
    # 3 versions per query, 2 updates each; every update keeps 3/80 then 80/80 tokens
    assert mine.split()[1:4] == ["3", "6", "0.5188"]  # (3/80 + 80/80) / 2
    assert "crawler-site: 1 crawls, 2.00 chunks, 70 tokens per query" in out
    sim = [ln for ln in lines if ln.startswith(("synthetic ", "anns-mine "))]
    assert {ln.split()[0] for ln in sim} == {"synthetic", "anns-mine"}
    assert any("non-streaming" in ln for ln in sim)
    with pytest.raises(SystemExit):
        main(["record-traces", "--out", str(tmp_path / "empty"), "--no-record"])
