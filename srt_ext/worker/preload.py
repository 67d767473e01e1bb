"""Imported once by the forkserver so every worker forks with torch, sglang and
the engine already loaded (importing them takes ~10-20 s on a busy machine)."""

import zmq  # noqa: F401

import radix_stream  # noqa: F401  (must precede any sglang import)
import srt_ext.engines.reference.engine  # noqa: F401
import srt_ext.worker.core  # noqa: F401
