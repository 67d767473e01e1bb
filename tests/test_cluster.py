"""A loopback cluster (issue 12): 3 `stream2llm serve` replicas of the tiny model behind
the real sglang-router (policy manual, min_load assignment) and the gateway.

Affinity (every call of a stream reaches the replica that opened it; outputs exact
vs one-shot), balance (open streams per replica within 25 %), a replica killed
mid-stream (its streams fail with a clear 410/502, the others finish exactly,
/health says degraded, new streams go to the survivors, the restarted replica gets
new work), and a router restart. One cluster for the whole module.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter

import httpx
import pytest

from srt_ext.cluster.launch import Cluster, ClusterSpec, router_available

_why = router_available()
if _why:
    print(f"test_cluster: skipped: {_why}")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900),
              pytest.mark.skipif(_why is not None, reason=_why or "")]  # fmt: skip
SP = {"max_new_tokens": 6}


@pytest.fixture(scope="module")
def cluster():
    spec = ClusterSpec(replicas=3, threads=1, shutdown_grace=5,
                       serve_args=["--max-total-tokens", "4096", "--stream-idle-timeout", "120"])
    with Cluster(spec) as c:
        yield c


def instances(c: Cluster) -> dict[str, int]:
    """replica process id (what acks carry) -> replica index."""
    out = {}
    for i, u in enumerate(c.replica_urls):
        out[httpx.get(u + "/livez", timeout=10).json()["instance"]] = i
    return out


def chunks_of(seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(5, 20000) for _ in range(rng.randrange(3, 9))] for _ in range(4)]


async def open_(h: httpx.AsyncClient, ids: list[int]) -> dict:
    r = await h.post("/v1/streams", json={"input_ids": ids, "sampling_params": SP})
    assert r.status_code == 201, r.text
    return r.json()


async def chunk(h: httpx.AsyncClient, rid: str, ids: list[int], final: bool = False) -> httpx.Response:
    return await h.post(f"/v1/streams/{rid}/chunks", json={"input_ids": ids, "final": final})


async def one_shot(h: httpx.AsyncClient, ids: list[int]) -> list[int]:
    r = await h.post("/generate", json={"input_ids": ids, "sampling_params": SP})
    assert r.status_code == 200, r.text
    return r.json()["output_ids"]


def test_affinity_and_exactness(cluster: Cluster):
    """30 concurrent streams: every ack of a stream names the replica its open did,
    and each output equals a one-shot run of the same final input."""
    async def run() -> None:
        async with httpx.AsyncClient(base_url=cluster.url, timeout=300) as h:
            async def one(seed: int) -> tuple[list[int], list[int], set[str]]:
                cs = chunks_of(seed)
                ack = await open_(h, cs[0])
                seen = {ack["replica"]}
                for j, c in enumerate(cs[1:]):
                    await asyncio.sleep(random.random() * 0.05)
                    r = await chunk(h, ack["rid"], c, final=j == len(cs) - 2)
                    assert r.status_code == 200, r.text
                    seen.add(r.json()["replica"])
                res = (await h.get(f"/v1/streams/{ack['rid']}/result")).json()
                return sum(cs, []), res["output_ids"], seen

            got = await asyncio.gather(*(one(s) for s in range(30)))
            assert all(len(seen) == 1 for _, _, seen in got)
            assert len(Counter(next(iter(s)) for _, _, s in got)) == 3  # all replicas used
            assert (await h.post("/flush_cache")).status_code == 200  # references run cold
            for ids, out, _ in got:
                assert out == await one_shot(h, ids)

    asyncio.run(run())


def test_balance_min_load(cluster: Cluster):
    """30 streams opened at once (none final): per replica within 25 % of the mean,
    as the router's assignment saw it (acks) and as the replicas count them."""
    async def run() -> None:
        async with httpx.AsyncClient(base_url=cluster.url, timeout=300) as h:
            acks = await asyncio.gather(*(open_(h, chunks_of(100 + s)[0]) for s in range(30)))
            per = Counter(a["replica"] for a in acks)
            stats = (await h.get("/v1/stats")).json()["replicas"]
            open_per = [s["streams_open"] for s in stats.values()]
            for a in acks:
                assert (await h.delete(f"/v1/streams/{a['rid']}")).status_code == 200
            assert sorted(open_per) == sorted(per.values())
            assert len(per) == 3 and max(per.values()) <= 12.5 and min(per.values()) >= 7.5, per

    asyncio.run(run())


def test_replica_kill_and_return(cluster: Cluster):
    async def run() -> None:
        async with httpx.AsyncClient(base_url=cluster.url, timeout=300) as h:
            who = instances(cluster)
            streams = [(await open_(h, chunks_of(200 + s)[0]), chunks_of(200 + s)) for s in range(9)]
            victim = who[streams[0][0]["replica"]]
            cluster.kill_replica(victim)
            t0 = time.monotonic()
            failed, finished = 0, 0
            for ack, cs in streams:
                r = await chunk(h, ack["rid"], sum(cs[1:], []), final=True)
                if who[ack["replica"]] == victim:
                    assert r.status_code in (410, 502), r.text
                    assert "error" in r.json() and r.json()["error"]
                    failed += 1
                    continue
                assert r.status_code == 200, r.text
                res = (await h.get(f"/v1/streams/{ack['rid']}/result")).json()
                assert res["output_ids"] == await one_shot(h, sum(cs, []))
                finished += 1
            assert failed >= 1 and finished >= 1 and time.monotonic() - t0 < 60
            health = (await h.get("/health")).json()
            assert health["status"] == "degraded" and health["replicas_up"] == 2
            # new streams go to the survivors (once the router has marked the dead one)
            await asyncio.sleep(4)
            fresh = [await open_(h, [7, 8, 9]) for _ in range(6)]
            assert all(a["replica"] in who and who[a["replica"]] != victim for a in fresh)
            # it comes back (a new process) and receives new work: the others are busier
            cluster.restart_replica(victim)
            back = httpx.get(cluster.replica_urls[victim] + "/livez").json()["instance"]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                w = httpx.get(f"{cluster.router.url}/workers").json()["workers"]
                if all(x["is_healthy"] for x in w):
                    break
                await asyncio.sleep(0.5)
            assert (await open_(h, [1, 2, 3]))["replica"] == back
            assert (await h.get("/health")).json()["status"] == "ok"

    asyncio.run(run())


def test_router_restart(cluster: Cluster):
    """The router's key -> replica map dies with it: a stream open across the restart
    either continues on its replica or fails with a clear 410, never silently
    elsewhere; while it is down calls fail 502 and /health is 503; after it
    returns new streams work."""
    async def run() -> None:
        async with httpx.AsyncClient(base_url=cluster.url, timeout=300) as h:
            cs = chunks_of(300)
            ack = await open_(h, cs[0])
            cluster.kill_router()
            r = await chunk(h, ack["rid"], cs[1])
            assert r.status_code == 502 and "router" in r.json()["error"]
            health = await h.get("/health")
            assert health.status_code == 503 and health.json()["router"] == "down"
            cluster.start_router()
            r = await chunk(h, ack["rid"], sum(cs[1:], []), final=True)
            if r.status_code == 200:
                assert r.json()["replica"] == ack["replica"]
                res = (await h.get(f"/v1/streams/{ack['rid']}/result")).json()
                assert res["output_ids"] == await one_shot(h, sum(cs, []))
            else:
                assert r.status_code == 410 and ack["replica"] in r.json()["error"], r.text
            fresh = await open_(h, cs[0])
            r = await chunk(h, fresh["rid"], sum(cs[1:], []), final=True)
            assert r.status_code == 200
            res = (await h.get(f"/v1/streams/{fresh['rid']}/result")).json()
            assert res["output_ids"] == await one_shot(h, sum(cs, []))

    asyncio.run(run())


def test_frontend_program_through_the_cluster(cluster: Cluster):
    """An SGLang frontend program with streamed context, pointed at the cluster URL
    unchanged, equals the same stream sent with the client."""
    import sglang as sgl

    from srt_ext.client.frontend import StreamingEndpoint, stream_context
    from srt_ext.client.rest import Client

    docs = ["The with statement wraps a block. ", "A try statement handles exceptions. "]

    @sgl.function
    def rag(s, chunks):  # type: ignore[no-untyped-def]
        s += "Context:\n"
        s += stream_context(chunks, mode="append")
        s += "Question: what is with?\nAnswer:"
        s += sgl.gen("answer", max_tokens=6, temperature=0)

    c = Client(cluster.url)
    before = c.stats()["streams_open"]  # earlier tests leave some open on purpose
    state = rag.run(chunks=iter(docs), backend=StreamingEndpoint(cluster.url))
    rid = c.open_stream(mode="append", text="Context:\n")
    for d in docs:
        c.send_chunk(rid, text=d)
    c.send_chunk(rid, text="Question: what is with?\nAnswer:", final=True,
                 sampling_params={"max_new_tokens": 6, "temperature": 0})
    assert c.result(rid)["text"] == state["answer"]
    assert c.stats()["streams_open"] == before and len(c.stats()["replicas"]) == 3


def test_sigterm_drains_together(cluster: Cluster):
    """Last (it stops the module's cluster): new work is refused at once, a stream
    already open still gets its final chunk through the router to its draining
    replica and finishes exactly, then every process exits (replicas with 0)."""
    cs = chunks_of(400)
    with httpx.Client(base_url=cluster.url, timeout=120) as h:
        ref = h.post("/generate", json={"input_ids": sum(cs, []), "sampling_params": SP})
        assert h.post("/flush_cache").status_code == 200
        ack = h.post("/v1/streams", json={"input_ids": cs[0], "sampling_params": SP}).json()
        stopper = threading.Thread(target=cluster.stop)
        stopper.start()
        while not cluster.app.state.gw.draining:
            time.sleep(0.01)
        r = h.post("/v1/streams", json={"input_ids": cs[0]})
        assert r.status_code == 503 and "shutting down" in r.json()["error"]
        got: dict = {}  # a reader waiting already (a drained replica exits once all are done)
        reader = threading.Thread(target=lambda: got.update(
            out=httpx.get(f"{cluster.url}/v1/streams/{ack['rid']}/result", timeout=120).json()))
        reader.start()
        time.sleep(1.0)  # the replicas have their SIGTERM now: draining
        r = h.post(f"/v1/streams/{ack['rid']}/chunks", json={"input_ids": sum(cs[1:], []), "final": True})
        assert r.status_code == 200, r.text
        reader.join(60)
        assert got["out"]["output_ids"] == ref.json()["output_ids"]
    stopper.join(120)
    assert not stopper.is_alive()
    assert all(c.proc is not None and c.proc.returncode == 0 for c in cluster.replicas)
    assert cluster.router.proc is not None and cluster.router.proc.poll() is not None
