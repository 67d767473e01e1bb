"""stream2llm.lcp.common_prefix_len against a plain loop, for every sequence type it meets."""

from __future__ import annotations

from array import array

from hypothesis import given
from hypothesis import strategies as st

from stream2llm.lcp import common_prefix_len


def _loop(a, b) -> int:  # type: ignore[no-untyped-def]
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return i


@given(st.lists(st.integers(0, 3), max_size=400), st.lists(st.integers(0, 3), max_size=400),
       st.none() | st.integers(0, 500))  # fmt: skip
def test_matches_a_loop(a: list[int], b: list[int], limit: int | None) -> None:
    b = a[: len(b)] + b[len(a) :] if len(b) > len(a) // 2 else b  # long common prefixes too
    want = _loop(a, b) if limit is None else min(_loop(a, b), limit)
    qa, qb = array("q", a), array("q", b)
    for x, y in ((a, b), (qa, qb), (qa, b), (a, qb), (tuple(a), b), (tuple(a), tuple(b))):
        assert common_prefix_len(x, y, limit) == want
    sa, sb = "".join(map(str, a)), "".join(map(str, b))
    assert common_prefix_len(sa, sb) == _loop(sa, sb)
