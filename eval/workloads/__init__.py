"""Seeded synthetic workloads fitted to the Stream2LLM paper's published trace statistics.

The package's API (``from eval.workloads import generate``): ``fits`` holds the fitted
distributions and the published statistics, ``gen`` draws queries from them, ``text``
holds the token-id vocabulary and renders queries as text. docs/workloads.md has the
fitting and a generated-vs-published table.
"""

from eval.workloads.fits import (
    ANNS,
    CRAWLER,
    FITS,
    PAPER_QUERIES,
    PAPER_TARGETS,
    STATS,
    WORKLOADS,
    Fit,
    LogQuantiles,
    summarize,
)
from eval.workloads.gen import generate, iter_generate, load_workload, main
from eval.workloads.text import (
    COMMON_WORDS,
    CONTEXT_ID,
    CONTEXT_WORD,
    QUESTION_ID,
    QUESTION_WORD,
    RESERVED,
    TEMPLATE_IDS,
    TEMPLATE_WORDS,
    as_text,
)

__all__ = [
    "ANNS", "COMMON_WORDS", "CONTEXT_ID", "CONTEXT_WORD", "CRAWLER", "FITS", "Fit",
    "LogQuantiles", "PAPER_QUERIES", "PAPER_TARGETS", "QUESTION_ID", "QUESTION_WORD",
    "RESERVED", "STATS", "TEMPLATE_IDS", "TEMPLATE_WORDS", "WORKLOADS", "as_text", "generate",
    "iter_generate", "load_workload", "main", "summarize",
]  # fmt: skip
