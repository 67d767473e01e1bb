"""`stream2llm cluster` on SGLang's engine (issue 20): 2 SGLang servers with our
plugin (tiny random Llama) behind the real sglang-router, and the gateway that
pins each stream to its replica. One cluster for the module (start-up ~2 min on
the shared 2-core box); the SIGTERM test stops it, so it runs last.

- streamed == one-shot (through the router, on a flushed cache) for append
  (ids and text) and update streams, concurrent, each pinned to one replica;
- balance: streams opened at once split evenly by open streams, and the
  replicas' own ``streams_open`` agree;
- the router restarting: streams go on (they do not pass through it), one-shots
  get a clear 502 while it is down, /health says so;
- a replica killed mid-stream: its streams' calls and a waiting reader get 410
  with the reason, the other replica's streams finish exactly and hold no KV
  afterwards, new streams avoid it, the restarted process gets new streams and
  the old ones still get 410;
- SIGTERM: new work 503, an open stream still finishes exactly, one that never
  finishes is aborted after the grace (410), every process exits;
- ``--disaggregation`` (its own cluster, after the first one stopped): 2 replicas,
  each a prefill/decode pair with our ZMQ KV backend, the router in PD mode:
  streams exact vs one-shots through the router, a killed pair's stream 410;
- the CLI's refusals (exit 2).
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import threading
import time
from collections import Counter

import httpx
import pytest

from srt_ext.cluster.launch import Cluster, ClusterSpec, router_available
from srt_ext.engines.sglang.launch import SGLangServerConfig

_why = router_available()
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200),
              pytest.mark.skipif(_why is not None, reason=_why or "")]  # fmt: skip
SP = {"max_new_tokens": 6, "temperature": 0.0}  # SGLang's default temperature is 1.0


@pytest.fixture(scope="module")
def cluster():
    cfg = SGLangServerConfig(model_path="tiny-random", max_total_tokens=4096, threads=1,
                             chunked_prefill_size=64, policy="ours", stream_idle_timeout=120,
                             log_level="warning")  # fmt: skip
    logs = tempfile.mkdtemp(prefix="test-cluster-")
    spec = ClusterSpec(replicas=2, server=cfg, shutdown_grace=5, log_dir=logs)
    with Cluster(spec) as c:
        yield c


def ids_of(seed: int, n: int = 4) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(5, 30000) for _ in range(rng.randrange(4, 12))] for _ in range(n)]


async def open_(h: httpx.AsyncClient, **body) -> dict:
    r = await h.post("/v1/streams", json={"sampling_params": SP, **body})
    assert r.status_code == 201, r.text
    return r.json()


async def chunk(h: httpx.AsyncClient, rid: str, final: bool = False, **body) -> httpx.Response:
    return await h.post(f"/v1/streams/{rid}/chunks", json={"final": final, **body})


async def one_shot(h: httpx.AsyncClient, **body) -> dict:
    """Through the gateway to SGLang's router and one of its replicas."""
    r = await h.post("/generate", json={"sampling_params": SP, **body})
    assert r.status_code == 200, r.text
    return r.json()


async def flush(h: httpx.AsyncClient) -> None:
    r = await h.post("/flush_cache")
    assert r.status_code == 200 and r.json()["flushed"], r.text


async def replica_stats(h: httpx.AsyncClient) -> dict[str, dict]:
    return (await h.get("/v1/stats")).json()["replicas"]


def test_streams_exact_and_pinned(cluster: Cluster):
    """Concurrent append (ids, text) and update streams: every ack of a stream comes
    from the replica its open went to, both replicas serve, and each output equals
    a one-shot run of the final input through the router on a flushed cache."""

    async def append_ids(h: httpx.AsyncClient, seed: int) -> tuple[dict, dict, set[str]]:
        cs = ids_of(seed)
        ack = await open_(h, input_ids=cs[0])
        seen = {ack["replica"]}
        for j, c in enumerate(cs[1:]):
            await asyncio.sleep(random.random() * 0.05)
            r = await chunk(h, ack["rid"], final=j == len(cs) - 2, input_ids=c)
            assert r.status_code == 200, r.text
            seen.add(r.json()["replica"])
        if seed == 0:  # a streamed read relayed by the gateway: its last event is the result
            res = await h.get(f"/v1/streams/{ack['rid']}/result", params={"stream": "true"})
            events = [ln[5:].strip() for ln in res.text.splitlines() if ln.startswith("data:")]
            assert res.status_code == 200 and events[-1] == "[DONE]", res.text
            return {"input_ids": sum(cs, [])}, json.loads(events[-2]), seen
        res = await h.get(f"/v1/streams/{ack['rid']}/result")
        assert res.status_code == 200, res.text
        return {"input_ids": sum(cs, [])}, res.json(), seen

    async def update_ids(h: httpx.AsyncClient, seed: int) -> tuple[dict, dict, set[str]]:
        base = ids_of(seed, 1)[0]
        versions = [base[: len(base) // 2] + [7, 8], base + [9], base + [11, 12, 13]]
        ack = await open_(h, mode="update", input_ids=versions[0])
        seen = {ack["replica"]}
        for j, v in enumerate(versions[1:]):
            r = await chunk(h, ack["rid"], final=j == len(versions) - 2, input_ids=v)
            assert r.status_code == 200, r.text
            seen.add(r.json()["replica"])
        res = await h.get(f"/v1/streams/{ack['rid']}/result")
        assert res.status_code == 200, res.text
        return {"input_ids": versions[-1]}, res.json(), seen

    async def append_text(h: httpx.AsyncClient, seed: int) -> tuple[dict, dict, set[str]]:
        parts = ["Context: the with statement wraps a block", f" in a context manager {seed}.",
                 " Question: what does it wrap?", " Answer:"]  # fmt: skip
        ack = await open_(h, text=parts[0])
        seen = {ack["replica"]}
        for j, t in enumerate(parts[1:]):
            r = await chunk(h, ack["rid"], final=j == len(parts) - 2, text=t)
            assert r.status_code == 200, r.text
            seen.add(r.json()["replica"])
        res = await h.get(f"/v1/streams/{ack['rid']}/result")
        assert res.status_code == 200, res.text
        return {"text": "".join(parts)}, res.json(), seen

    async def run() -> None:
        async with httpx.AsyncClient(base_url=cluster.url, timeout=600) as h:
            jobs = ([append_ids(h, s) for s in range(4)] + [update_ids(h, 10 + s) for s in range(3)]
                    + [append_text(h, 20 + s) for s in range(2)])  # fmt: skip
            got = await asyncio.gather(*jobs)
            assert all(len(seen) == 1 for _, _, seen in got)
            assert len(Counter(next(iter(s)) for _, _, s in got)) == 2  # both replicas served
            for body, res, _ in got:
                await flush(h)  # each reference runs cold
                ref = await one_shot(h, **body)
                assert res["output_ids"] == ref["output_ids"], body
                assert res["text"] == ref["text"]

    asyncio.run(run())


def test_balance_by_open_streams(cluster: Cluster):
    """12 streams opened at once (none final) split 6/6, and each replica's own
    ``streams_open`` says the same; aborting them leaves nothing open."""

    async def run() -> None:
        async with httpx.AsyncClient(base_url=cluster.url, timeout=600) as h:
            acks = await asyncio.gather(*(open_(h, input_ids=ids_of(100 + s)[0]) for s in range(12)))
            per = Counter(a["replica"] for a in acks)
            assert per == {"replica0": 6, "replica1": 6}, per
            stats = await replica_stats(h)
            assert {n: s["streams_open"] for n, s in stats.items()} == per
            health = (await h.get("/health")).json()
            assert {n: r["open_streams"] for n, r in health["replicas"].items()} == per
            for a in acks:
                assert (await h.delete(f"/v1/streams/{a['rid']}")).status_code == 200
            health = (await h.get("/health")).json()
            assert all(r["open_streams"] == 0 for r in health["replicas"].values())
            assert (await h.post(f"/v1/streams/{acks[0]['rid']}/chunks",
                                 json={"input_ids": [5]})).status_code == 404  # fmt: skip

    asyncio.run(run())


def test_router_restart(cluster: Cluster):
    """Streams do not pass through the router: one open across a router restart
    goes on and finishes exactly; while the router is down one-shots get a clear
    502 and /health says router down (degraded); afterwards one-shots work."""

    async def run() -> None:
        async with httpx.AsyncClient(base_url=cluster.url, timeout=600) as h:
            cs = ids_of(300)
            ack = await open_(h, input_ids=cs[0])
            cluster.kill_router()
            r = await chunk(h, ack["rid"], input_ids=cs[1])
            assert r.status_code == 200 and r.json()["replica"] == ack["replica"], r.text
            r = await h.post("/generate", json={"input_ids": cs[0], "sampling_params": SP})
            assert r.status_code == 502 and "router" in r.json()["error"], r.text
            health = await h.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "degraded"
            assert health.json()["router"] == "down"
            cluster.start_router()
            r = await chunk(h, ack["rid"], final=True, input_ids=sum(cs[2:], []))
            assert r.status_code == 200, r.text
            res = (await h.get(f"/v1/streams/{ack['rid']}/result")).json()
            await flush(h)
            assert res["output_ids"] == (await one_shot(h, input_ids=sum(cs, [])))["output_ids"]
            assert (await h.get("/health")).json()["status"] == "ok"

    asyncio.run(run())


def test_replica_killed_mid_stream_and_return(cluster: Cluster):
    async def run() -> None:
        async with httpx.AsyncClient(base_url=cluster.url, timeout=600) as h:
            streams = [(await open_(h, input_ids=ids_of(200 + s)[0]), ids_of(200 + s)) for s in range(4)]
            by = {a["replica"] for a, _ in streams}
            assert by == {"replica0", "replica1"}
            victim_name = streams[0][0]["replica"]
            victim = int(victim_name[-1])
            on_victim = [s for s in streams if s[0]["replica"] == victim_name]
            others = [s for s in streams if s[0]["replica"] != victim_name]
            # a reader already waiting on a stream of the victim
            waiting = asyncio.ensure_future(h.get(f"/v1/streams/{on_victim[0][0]['rid']}/result"))
            await asyncio.sleep(0.5)
            cluster.kill_replica(victim)
            r = await waiting
            assert r.status_code == 410 and victim_name in r.json()["error"], r.text
            for ack, cs in on_victim:
                r = await chunk(h, ack["rid"], final=True, input_ids=sum(cs[1:], []))
                assert r.status_code == 410, r.text
                assert victim_name in r.json()["error"] and "open a new stream" in r.json()["error"]
            done = []
            for ack, cs in others:  # the survivor's streams go on
                r = await chunk(h, ack["rid"], final=True, input_ids=sum(cs[1:], []))
                assert r.status_code == 200, r.text
                done.append(((await h.get(f"/v1/streams/{ack['rid']}/result")).json(), sum(cs, [])))
            health = (await h.get("/health")).json()
            assert health["status"] == "degraded" and health["replicas_up"] == 1
            assert health["replicas"][victim_name]["status"] == "down"
            fresh = [await open_(h, input_ids=[7, 8, 9, s]) for s in range(3)]
            assert all(a["replica"] != victim_name for a in fresh)
            for a in fresh:
                assert (await h.delete(f"/v1/streams/{a['rid']}")).status_code == 200
            # the survivor holds no KV of the streams that ended (finished, aborted)
            survivor = (await replica_stats(h))[fresh[0]["replica"]]
            assert survivor["streams_open"] == 0 and survivor["kv_pinned_tokens"] == 0, survivor
            for res, ids in done:
                await flush(h)
                assert res["output_ids"] == (await one_shot(h, input_ids=ids))["output_ids"]
            # it comes back (a new process on its URL): new streams go to it (the
            # survivor has one open), streams of the old process still get 410
            keep = await open_(h, input_ids=[3, 4, 5])
            await asyncio.to_thread(cluster.restart_replica, victim)
            deadline = time.monotonic() + 30
            while (await h.get("/health")).json()["status"] != "ok" and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            assert (await h.get("/health")).json()["status"] == "ok"
            back = await open_(h, input_ids=[1, 2, 3])
            assert back["replica"] == victim_name
            r = await chunk(h, on_victim[0][0]["rid"], final=True, input_ids=[5, 6])
            assert r.status_code == 410 and victim_name in r.json()["error"]
            r = await chunk(h, back["rid"], final=True, input_ids=[4, 5])
            assert r.status_code == 200 and r.json()["replica"] == victim_name
            assert (await h.get(f"/v1/streams/{back['rid']}/result")).status_code == 200
            assert (await h.delete(f"/v1/streams/{keep['rid']}")).status_code == 200

    asyncio.run(run())


def test_sigterm_drains_together(cluster: Cluster):
    """Last (it stops the module's cluster): new work is refused at once, an open
    stream still gets its final chunk to its replica and finishes exactly, one
    that never finishes is aborted after the grace (410), then every process
    exits (SGLang's servers with 0)."""
    cs = ids_of(400)
    with httpx.Client(base_url=cluster.url, timeout=300) as h:
        assert h.post("/flush_cache").status_code == 200
        ref = h.post("/generate", json={"input_ids": sum(cs, []), "sampling_params": SP}).json()
        assert h.post("/flush_cache").status_code == 200
        ack = h.post("/v1/streams", json={"input_ids": cs[0], "sampling_params": SP}).json()
        idle = h.post("/v1/streams", json={"input_ids": [9, 9, 9], "sampling_params": SP}).json()
        stopper = threading.Thread(target=cluster.stop)
        t0 = time.monotonic()
        stopper.start()
        while not cluster.app.state.gw.draining:
            time.sleep(0.01)
        r = h.post("/v1/streams", json={"input_ids": cs[0]})
        assert r.status_code == 503 and "shutting down" in r.json()["error"]
        r = h.post("/generate", json={"input_ids": cs[0]})
        assert r.status_code == 503
        got: dict = {}
        reader = threading.Thread(target=lambda: got.update(
            out=httpx.get(f"{cluster.url}/v1/streams/{ack['rid']}/result", timeout=120).json()))
        reader.start()
        time.sleep(0.5)
        r = h.post(f"/v1/streams/{ack['rid']}/chunks", json={"input_ids": sum(cs[1:], []), "final": True})
        assert r.status_code == 200, r.text
        reader.join(60)
        assert got["out"]["output_ids"] == ref["output_ids"]
        deadline = time.monotonic() + 30
        while cluster.app.state.gw.streams[idle["rid"]].ended is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert time.monotonic() - t0 >= 4.5  # the idle stream had its grace
        r = h.post(f"/v1/streams/{idle['rid']}/chunks", json={"input_ids": [1], "final": True})
        assert r.status_code == 410 and "shut down" in r.json()["error"], r.text
    stopper.join(180)
    assert not stopper.is_alive()
    assert all(rep.returncode == 0 for rep in cluster.replicas), [r.returncode for r in cluster.replicas]
    assert cluster.router.proc is not None and cluster.router.proc.poll() is not None


def test_disaggregated_cluster():
    """`--disaggregation`: 2 replicas, each a prefill/decode pair of SGLang servers
    (KV over our ZMQ backend), the router in its PD mode. Concurrent append and
    update streams are pinned to their prefill servers and equal one-shots sent
    through the router's PD mode (flushed cache); killing one pair mid-stream
    gives its stream a 410 while the other pair's stream finishes exactly."""
    cfg = SGLangServerConfig(model_path="tiny-random", max_total_tokens=4096, threads=1,
                             chunked_prefill_size=64, policy="ours", stream_idle_timeout=120,
                             log_level="warning")  # fmt: skip
    spec = ClusterSpec(replicas=2, disaggregation=True, server=cfg, shutdown_grace=5,
                       log_dir=tempfile.mkdtemp(prefix="test-cluster-pd-"), startup_timeout=900)  # fmt: skip

    async def stream(h: httpx.AsyncClient, mode: str, pieces: list[list[int]]) -> tuple[list[int], dict, str]:
        ack = await open_(h, mode=mode, input_ids=pieces[0])
        for j, p in enumerate(pieces[1:]):
            r = await chunk(h, ack["rid"], final=j == len(pieces) - 2, input_ids=p)
            assert r.status_code == 200 and r.json()["replica"] == ack["replica"], r.text
        res = await h.get(f"/v1/streams/{ack['rid']}/result")
        assert res.status_code == 200, res.text
        final = sum(pieces, []) if mode == "append" else pieces[-1]
        return final, res.json(), ack["replica"]

    async def run(c: Cluster) -> None:
        async with httpx.AsyncClient(base_url=c.url, timeout=600) as h:
            base = ids_of(500, 1)[0]
            got = await asyncio.gather(stream(h, "append", ids_of(501)), stream(h, "append", ids_of(502)),
                                       stream(h, "update", [base[:5], base, base + [17, 18]]))  # fmt: skip
            assert {r for _, _, r in got} == {"replica0", "replica1"}
            for ids, res, _ in got:
                await flush(h)
                assert res["output_ids"] == (await one_shot(h, input_ids=ids))["output_ids"], ids
            a, b = await open_(h, input_ids=ids_of(510)[0]), await open_(h, input_ids=ids_of(511)[0])
            assert {a["replica"], b["replica"]} == {"replica0", "replica1"}
            c.kill_replica(int(a["replica"][-1]))
            r = await chunk(h, a["rid"], final=True, input_ids=[5, 6, 7])
            assert r.status_code == 410 and a["replica"] in r.json()["error"], r.text
            r = await chunk(h, b["rid"], final=True, input_ids=sum(ids_of(511)[1:], []))
            assert r.status_code == 200, r.text
            res = (await h.get(f"/v1/streams/{b['rid']}/result")).json()
            await flush(h)
            assert res["output_ids"] == (await one_shot(h, input_ids=sum(ids_of(511), [])))["output_ids"]

    with Cluster(spec) as c:
        kinds = Counter(w["worker_type"] for w in httpx.get(c.router.url + "/workers").json()["workers"])
        assert kinds == {"prefill": 2, "decode": 2}, kinds
        asyncio.run(run(c))


def test_cli_refusals(capsys: pytest.CaptureFixture[str]):
    """No servers: what `stream2llm cluster` refuses, with exit 2 and the reason."""
    from stream2llm.cli import main

    def cli(*args: str) -> tuple[int, str]:
        rc = main(["cluster", *args])
        return rc, capsys.readouterr().err

    rc, err = cli("--replicas", "2", "--disaggregation", "--", "--decode-url", "http://127.0.0.1:1")
    assert rc == 2 and "the cluster's to set" in err, err
    rc, err = cli("--replicas", "2", "--", "--engine", "reference")
    assert rc == 2 and "SGLang's engine" in err, err
    rc, err = cli("--replicas", "2", "--", "--disaggregation-mode", "prefill")
    assert rc == 2 and "disaggregation-mode" in err, err
    rc, err = cli("--replicas", "0")
    assert rc == 2 and "at least 1" in err, err
