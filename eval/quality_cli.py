"""`stream2llm eval-quality`: the question set through a real server, both retrievers.

The server is SGLang's own with the stream2llm plugin (``SGLangServer``, the
default engine), started here and stopped at the end.

Prints a per-retriever table (recall@k, contains-gold accuracy, token F1,
identical-output rate streaming vs non-streaming, latencies) and the
accuracy-vs-chunk curve, writes everything as JSON and draws the curve as a PNG.
Exits 1 if any streamed output differs from its one-shot twin.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any


def _cache_dir() -> Path:
    return Path(os.environ.get("STREAM2LLM_CACHE", Path.home() / ".cache" / "stream2llm"))


def load_or_build_index(passages: list[Any]) -> Any:
    """The HNSW index over ``passages``, cached; rebuilt if the cache holds other passages
    (another Python's pydoc topics, a partial write)."""
    from retrievers.hnsw import HnswIndex, IndexFormatError

    path = _cache_dir() / f"quality-index-pydoc-{len(passages)}"
    try:
        index = HnswIndex.load(path)
        if [p.id for p in index.passages] == [p.id for p in passages]:
            return index
    except (IndexFormatError, OSError, ValueError):
        pass
    print(f"embedding {len(passages)} passages for the HNSW index (once; cached in {path})")
    index = HnswIndex.build(passages, progress=True)
    index.save(path)
    return index


def write_report(out: Path, meta: dict[str, Any], records: list[Any], wall_s: float,
                 answer_s: float, complete: bool) -> dict[str, Any]:  # fmt: skip
    """``out/quality.json``: the setup, summary, curve and every record."""
    from eval.quality_report import curve, summarize

    report = {**meta, "complete": complete, "records_done": len(records), "wall_s": wall_s,
              "answer_s": answer_s, "summary": summarize(records), "curve": curve(records),
              "records": [r.to_json() for r in records]}
    tmp = out / "quality.json.tmp"
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(out / "quality.json")
    return report


def show(report: dict[str, Any], out: Path, source: Path | None = None) -> int:
    """Print the tables, draw the PNG; returns how many outputs were identical."""
    from eval.quality import records_from_json
    from eval.quality_report import plot_curve, tables

    records = records_from_json(report["records"])
    print(tables(records))
    same = sum(r.same_output for r in records)
    print(f"identical outputs streaming vs non-streaming: {same}/{len(records)}")
    print(f"model {report['model']} ({report['prompt']} prompt); {len(records)} answers "
          f"({report['questions']} questions x {len(report['retrievers'])} retrievers"
          f"{'' if report.get('complete', True) else ', run stopped early'}) in "
          f"{report['wall_s']:.0f} s ({report['answer_s']:.0f} s answering)")
    print(f"json: {source or out / 'quality.json'}")
    if report["curve"]:
        print(f"plot: {plot_curve(report['curve'], out / 'quality_curve.png')}")
    return same


def render(args: argparse.Namespace) -> int:
    """--from-json: tables and plot again from a saved run (a stopped one too)."""
    path = Path(args.from_json)
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return _fail(f"cannot read {path}: {exc}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    same = show(report, out, source=path)
    return 0 if same == report["records_done"] else 1


def _fail(msg: str) -> int:
    print(f"stream2llm eval-quality: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from eval.qa_data import QuestionSetError, load_questions
    from eval.quality import RETRIEVERS, QualityRun, Settings
    from eval.quality_site import SiteSearch, generate_corpus_site, serve_corpus_site
    from retrievers.corpus import builtin_passages
    from srt_ext.engines.reference.model_store import resolve_model
    from srt_ext.engines.sglang.launch import SGLangServer, SGLangServerConfig

    if args.from_json:
        return render(args)
    if args.limit is not None and args.limit < 1:
        return _fail("--limit must be >= 1")
    if min(args.k, args.max_new_tokens, args.shards) < 1:
        return _fail("-k, --max-new-tokens and --shards must be >= 1")
    retrievers = args.retrievers.split(",")
    bad = [r for r in retrievers if r not in RETRIEVERS]
    if bad:
        return _fail(f"unknown retriever(s) {bad}; choose from {','.join(RETRIEVERS)}")
    passages = builtin_passages()
    try:
        questions = load_questions(args.questions, known_passages={p.id for p in passages},
                                   limit=args.limit)
    except QuestionSetError as exc:
        return _fail(str(exc))
    settings = Settings(k=args.k, max_new_tokens=args.max_new_tokens,
                        search_delay_s=args.search_delay, page_delay_s=args.page_delay,
                        shards=args.shards,
                        curve=not args.no_curve)
    t_start = time.monotonic()
    if args.index:
        from retrievers.hnsw import HnswIndex, IndexFormatError

        try:
            index = HnswIndex.load(args.index)
        except IndexFormatError as exc:
            return _fail(str(exc))
    else:
        index = load_or_build_index(passages)
    from retrievers.cli import layout_from_args

    model = resolve_model(args.model_path)
    layout = layout_from_args(args)  # the model's chat template (or --prompt plain)
    tok = AutoTokenizer.from_pretrained(model)
    tok.model_max_length = 1 << 30  # the server checks the model's context, not the tokenizer

    def tokenize(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False)["input_ids"])

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": str(model), "prompt": args.prompt, "settings": asdict(settings),
            "questions": len(questions), "retrievers": retrievers}
    records: list[Any] = []
    prior_answer_s = 0.0
    if args.resume and (out / "quality.json").is_file():  # keep what a stopped run measured
        from eval.quality import records_from_json

        saved = json.loads((out / "quality.json").read_text())
        if saved.get("settings") != meta["settings"] or saved.get("model") != meta["model"]:
            return _fail(f"{out / 'quality.json'} was run with other settings or model")
        records = records_from_json(saved["records"])
        t_start -= saved["wall_s"]  # times add up over the pieces of a resumed run
        prior_answer_s = float(saved["answer_s"])
        print(f"resuming: {len(records)} answers kept from {out / 'quality.json'}")
    done = {(r.qid, r.retriever) for r in records}
    with tempfile.TemporaryDirectory(prefix="s2l-corpus-site-") as root:
        paths = generate_corpus_site(root, passages)
        cfg = SGLangServerConfig(model_path=str(model), max_total_tokens=args.max_total_tokens,
                                 threads=args.threads, chunked_prefill_size=args.token_budget)
        print("starting SGLang's server with the stream2llm plugin", flush=True)
        with SGLangServer(cfg).start(progress=True) as srv, \
                serve_corpus_site(root, delay_s=settings.page_delay_s) as site:
            t_ready = time.monotonic() - prior_answer_s
            runner = QualityRun(srv.url, tokenize, settings, index, SiteSearch(passages, site),
                                paths, layout)
            try:
                jobs = [(q, r) for q in questions for r in retrievers if (q.id, r) not in done]
                for q, r in tqdm(jobs, desc="questions x retrievers", unit="q"):
                    records.append(runner.answer(r, q))
                    # written as it goes: a run stopped early keeps what it measured
                    write_report(out, meta, records, time.monotonic() - t_start,
                                 time.monotonic() - t_ready, complete=False)
            finally:
                runner.close()
    report = write_report(out, meta, records, time.monotonic() - t_start,
                          time.monotonic() - t_ready, complete=True)
    same = show(report, out)
    return 0 if same == len(records) else 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser("eval-quality", help="answer quality of streamed RAG on a question set")
    p.add_argument("--questions", help="question set JSONL (default: the built-in set)")
    p.add_argument("--limit", type=int, help="only the first N questions (quick runs)")
    p.add_argument("--retrievers", default=",".join(("search", "crawl")),
                   help="comma-separated: search (HNSW, update mode), crawl (append mode)")
    p.add_argument("--index", help="a prebuilt HNSW index dir (`stream2llm index build`; "
                   "default: one over the built-in corpus, built once and cached)")
    p.add_argument("--model-path", help="smollm2-135m-instruct (default), tiny-random, or a "
                   "checkpoint dir")
    p.add_argument("--prompt", choices=("chat", "plain"), default="chat",
                   help="chat: the model's chat template (question on the final chunk); "
                   "plain: no template (a base model, tiny-random)")
    p.add_argument("-k", type=int, default=3, help="passages/pages in the final context")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--search-delay", type=float, default=0.4,
                   help="seconds per progressive-search step (a remote store's latency)")
    p.add_argument("--shards", type=int, default=2,
                   help="progressive search shards (versions: at most shards + 1)")
    p.add_argument("--page-delay", type=float, default=0.3,
                   help="seconds the local site takes per page (a web server's latency)")
    p.add_argument("--no-curve", action="store_true",
                   help="skip the answers after each non-final chunk (about half the time)")
    p.add_argument("--threads", type=int, default=1,
                   help="threads per SGLang process (0: SGLang's choice); 1 because two OpenMP threads on a "
                   "busy 2-core machine ran ~10x slower than one (docs/quality.md)")
    p.add_argument("--token-budget", type=int, default=256,
                   help="tokens per engine step (SGLang's --chunked-prefill-size): small steps "
                   "keep the scheduler answering chunk messages quickly on a slow CPU")
    p.add_argument("--max-total-tokens", type=int, default=32768, help="KV pool size")
    p.add_argument("--resume", action="store_true",
                   help="keep the answers already in OUT/quality.json, run the rest")
    p.add_argument("--from-json", help="print and plot a saved quality.json instead of running")
    p.add_argument("--out", default="out/quality", help="where quality.json and the PNG go")
    p.set_defaults(func=run)
