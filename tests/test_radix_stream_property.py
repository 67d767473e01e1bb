"""Property test: random interleavings of open / append / update / compute /
preempt / resume / pin / unpin / finish / abort / evict over several streams with
shared prefixes. After every step the slot accounting must hold and every
resident stream's slots must contain exactly the KV of its input prefix (the
trivially correct model: a list of input tokens per stream)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from kv_fakes import FakeKV

TEMPLATE = [7, 7, 1, 2, 3]
DOCS = [[10 + d * 10 + j for j in range(n)] for d, n in enumerate([3, 6, 9, 4, 7])]
RIDS = ["s0", "s1", "s2", "s3"]

doc_lists = st.lists(st.integers(0, len(DOCS) - 1), min_size=0, max_size=4)


def build(docs: list[int]) -> list[int]:
    return TEMPLATE + [t for d in docs for t in DOCS[d]]


class StreamingKVMachine(RuleBasedStateMachine):
    page_size = 1

    @initialize(capacity=st.sampled_from([48, 64, 128]))
    def setup(self, capacity: int) -> None:
        self.f = FakeKV(capacity, self.page_size, host=40)
        self.kv = self.f.kv
        self.inputs: dict[str, list[int]] = {}

    # ---- stream lifecycle ------------------------------------------------
    @rule(rid=st.sampled_from(RIDS), docs=doc_lists)
    def open(self, rid: str, docs: list[int]) -> None:
        if rid in self.inputs:
            return
        self.kv.open(rid)
        self.inputs[rid] = build(docs)
        self.kv.reuse_prefix(rid, self.inputs[rid])

    @rule(rid=st.sampled_from(RIDS), keep=st.booleans())
    def finish(self, rid: str, keep: bool) -> None:
        if rid in self.inputs and not self.kv._streams[rid].reserved:
            self.kv.close(rid, keep_cache=keep)
            del self.inputs[rid]

    # ---- input -----------------------------------------------------------
    @rule(rid=st.sampled_from(RIDS), d=st.integers(0, len(DOCS) - 1))
    def append(self, rid: str, d: int) -> None:
        if rid in self.inputs:
            self.inputs[rid] = self.inputs[rid] + DOCS[d]
            self.kv.reuse_prefix(rid, self.inputs[rid])

    @rule(rid=st.sampled_from(RIDS), docs=doc_lists)
    def update(self, rid: str, docs: list[int]) -> None:
        if rid not in self.inputs:
            return
        new = build(docs)
        old_tokens = self.kv.token_ids(rid)
        lcp = next(
            (i for i, (a, b) in enumerate(zip(old_tokens, new, strict=False)) if a != b),
            min(len(old_tokens), len(new)),
        )
        exact = self.kv.is_resident(rid)  # no swapped KV to drop
        kept, invalidated = self.kv.truncate(rid, new)
        assert kept <= lcp and kept + invalidated == len(old_tokens)
        if exact:  # at worst the partial page at the cut is lost
            assert kept >= lcp // self.page_size * self.page_size
        if exact and self.page_size == 1:
            assert kept == lcp
        self.inputs[rid] = new
        self.kv.reuse_prefix(rid, new)

    # ---- compute and memory pressure --------------------------------------
    @rule(rid=st.sampled_from(RIDS), n=st.integers(1, 12))
    def compute(self, rid: str, n: int) -> None:
        if rid in self.inputs and self.kv.is_resident(rid):
            left = len(self.inputs[rid]) - self.kv.computed(rid)
            if left > 0:
                self.f.compute(rid, self.inputs[rid], min(n, left))

    @rule(rid=st.sampled_from(RIDS), mode=st.sampled_from(["recompute", "swap"]))
    def preempt(self, rid: str, mode: str) -> None:
        if rid in self.inputs and self.kv.is_resident(rid):
            held = self.kv.held_tokens(rid)
            free = self.kv.stats().free
            res = self.kv.preempt(rid, mode)  # type: ignore[arg-type]
            assert res.freed == held and self.kv.stats().free == free + held

    @rule(rid=st.sampled_from(RIDS))
    def resume(self, rid: str) -> None:
        if rid in self.inputs:
            self.kv.resume(rid)

    @rule(rid=st.sampled_from(RIDS), pin=st.booleans())
    def pin_unpin(self, rid: str, pin: bool) -> None:
        if rid not in self.inputs or self.kv.is_swapped(rid):
            return
        if pin:
            self.kv.pin(rid)
        else:
            self.kv.unpin(rid)

    @precondition(lambda self: hasattr(self, "kv"))
    @rule(n=st.integers(1, 64))
    def evict(self, n: int) -> None:
        pinned_before = {r: self.kv.token_ids(r) for r in self.inputs if self.kv.is_resident(r)}
        self.kv.tree.evict_tokens(n)
        for rid, tokens in pinned_before.items():  # LRU never takes pinned KV
            assert self.kv.token_ids(rid) == tokens

    # ---- the model check -----------------------------------------------------
    @invariant()
    def accounting_and_content(self) -> None:
        if not hasattr(self, "kv"):
            return
        self.kv.check()
        for rid, inp in self.inputs.items():
            tokens = self.kv.token_ids(rid)
            assert tokens == inp[: len(tokens)], f"{rid} computed tokens are not its input"
            if self.kv._streams[rid].pinned:
                self.f.assert_content(rid)


class StreamingKVMachinePaged(StreamingKVMachine):
    page_size = 4


_settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestStreamingKV = StreamingKVMachine.TestCase
TestStreamingKV.settings = _settings
TestStreamingKVPaged = StreamingKVMachinePaged.TestCase
TestStreamingKVPaged.settings = _settings
