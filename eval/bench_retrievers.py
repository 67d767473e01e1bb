"""LCP kept by progressive HNSW search: stable vs score document order (issue 5).

For each question, run the progressive search once per (strategy, order) and
measure, over successive emitted versions, the longest common prefix with the
previous version (what an update-mode server keeps of its KV) and the tokens it
must prefill again. Token counts use whitespace tokens and MiniLM word pieces.

    .venv/bin/python eval/bench_retrievers.py [--index DIR] [--questions 50] [-k 5]

Without --index, the built-in corpus is embedded once and cached in
out/bench-retrievers-index (~1 min on a CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrievers.corpus import builtin_passages  # noqa: E402
from retrievers.embed import get_model  # noqa: E402
from retrievers.hnsw import HnswIndex, IndexFormatError  # noqa: E402
from retrievers.progressive import Order, Strategy, lcp_len, progressive_search_sync  # noqa: E402

QUESTIONS = """\
How does the with statement call __enter__ and __exit__?
How are default argument values evaluated?
What is the difference between is and == ?
How do generators and the yield expression work?
What happens to an exception raised inside try with a finally clause?
How are names resolved in nested functions and closures?
How do format specifiers pad and align numbers?
What are the rules for floor division and the modulo operator?
How does augmented assignment like += work on lists?
What does the global statement do?
How does nonlocal differ from global?
How are keyword-only arguments declared?
What does the assert statement do when optimizations are enabled?
How does the import statement find and load modules?
What does __slots__ do in a class?
How are class attributes looked up through the MRO?
How do descriptors implement properties?
What does __getattr__ do compared to __getattribute__?
How is a for loop executed over an iterator?
What does the else clause of a loop mean?
How do async with and async for work?
What is an await expression allowed to await?
How are chained comparisons like a < b < c evaluated?
How do boolean operators and and or short-circuit?
What does the conditional expression x if c else y evaluate?
How are lambda expressions restricted?
What is the precedence of operators in Python?
How do list comprehensions scope their loop variable?
How do dictionary displays handle duplicate keys?
What does the starred assignment target do?
How is a slice of a sequence computed?
How do bitwise shift operators work on negative numbers?
What does the power operator return for negative exponents?
How are string literals concatenated implicitly?
What escape sequences are recognized in string literals?
How do f-strings evaluate expressions?
What are the rules for identifiers and reserved keywords?
How does the match statement match class patterns?
What does the raise from syntax do to exception chaining?
How does the del statement remove names and items?
What does the return statement do inside a generator?
How does pdb set a breakpoint and step through code?
What special method makes an object callable?
How do __eq__ and __hash__ interact?
What does __init_subclass__ customize?
How do metaclasses create classes?
How are code objects and frame objects related?
What are the truth values of built-in objects?
How do string methods like split and strip behave?
What does the pass statement do?""".splitlines()


def load_or_build(index_dir: Path | None) -> HnswIndex:
    path = index_dir or Path("out/bench-retrievers-index")
    try:
        return HnswIndex.load(path)
    except IndexFormatError:
        if index_dir is not None:
            raise
    print(f"building index over the built-in corpus into {path}", file=sys.stderr)
    index = HnswIndex.build(builtin_passages(), progress=True)
    index.save(path)
    return index


def measure(index: HnswIndex, questions: list[str], k: int, strategy: Strategy, order: Order,
            wordpiece) -> dict[str, float]:
    n_emit, lcp_c, lcp_w, lcp_p, prev_w, prefill_p, total_p = [], 0, 0, 0, 0, 0, 0
    for q in questions:
        vs = [v for v in progressive_search_sync(index, q, k=k, strategy=strategy, order=order)
              if v.changed]
        n_emit.append(len(vs))
        toks = [wordpiece(v.text) for v in vs]
        prefill_p += len(toks[0])
        for a, b, ta, tb in zip(vs, vs[1:], toks, toks[1:], strict=False):
            lcp_c += lcp_len(a.text, b.text)
            lcp_w += lcp_len(a.text.split(), b.text.split())
            kept = lcp_len(ta, tb)
            lcp_p += kept
            prev_w += len(ta)
            prefill_p += len(tb) - kept
        total_p += sum(len(t) for t in toks)
    updates = sum(n - 1 for n in n_emit) or 1
    return {"emissions": statistics.mean(n_emit), "lcp_chars": lcp_c / updates,
            "lcp_ws": lcp_w / updates, "lcp_wp": lcp_p / updates,
            "kept_frac": lcp_p / max(prev_w, 1), "prefill_wp": prefill_p / len(questions),
            "no_reuse_wp": total_p / len(questions)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path)
    ap.add_argument("--questions", type=int, default=50)
    ap.add_argument("-k", type=int, default=5)
    args = ap.parse_args(argv)
    index = load_or_build(args.index)
    tok = get_model().tokenizer
    tok.model_max_length = 10**9  # counting only; silences the 512-token warning

    def wordpiece(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    qs = QUESTIONS[: args.questions]
    print(f"{len(index)} passages, {len(qs)} questions, k={args.k}; per update (version after "
          "the first): mean LCP with the previous version; wp = MiniLM word pieces")
    print(f"{'strategy':<8} {'order':<6} {'emits':>5} {'LCP ch':>7} {'LCP ws':>7} {'LCP wp':>7} "
          f"{'kept%':>6} {'prefill wp/q':>12} {'no-reuse wp/q':>13}")
    strategies: tuple[Strategy, ...] = ("shards", "ef")
    orders: tuple[Order, ...] = ("stable", "score")
    for strategy in strategies:
        for order in orders:
            m = measure(index, qs, args.k, strategy, order, wordpiece)
            print(f"{strategy:<8} {order:<6} {m['emissions']:5.2f} {m['lcp_chars']:7.0f} "
                  f"{m['lcp_ws']:7.0f} {m['lcp_wp']:7.0f} {100 * m['kept_frac']:5.1f}% "
                  f"{m['prefill_wp']:12.0f} {m['no_reuse_wp']:13.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
