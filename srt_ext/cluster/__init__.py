"""Many replicas of SGLang's engine behind SGLang's router (issues 12, 20): docs/scale-out.md.

- ``replicas``: what a replica is (an SGLang server with our plugin; a prefill/decode pair).
- ``launch``: ``Cluster``: the replicas, sglang-router (one-shot traffic) and the gateway.
- ``gateway``: the cluster's public URL: streams pinned to their replica by stream id.
- ``health``: the cluster's ``/health`` and ``/v1/stats``.
- ``cli``: ``stream2llm cluster``; ``bench``: the same load on 1, 2, ... replicas.
- ``envelope``: stream calls carried on ``/generate``; only the retiring reference
  server (``srt_ext/api/server.py``) still reads it, the cluster no longer sends it.
"""
