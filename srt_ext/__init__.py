"""srt_ext: the serving runtime, one package per process ("room").

* ``api/``: the API process (REST + OpenAI routes, tokenizer, limits, the link to the worker);
* ``worker/``: the worker process (scheduler + engine behind a ZMQ loop; ``WorkerCore`` is
  the socket-free heart that the tests drive directly);
* ``client/``: code that runs in the caller's process (REST client, SGLang frontend backend);
* ``engines/``: the model engines, ``reference`` (ours) and ``sglang`` (the plugin into
  SGLang's own scheduler process);
* ``messages.py``: the typed messages between the API and worker rooms (shared by both);
* ``cli/``: the ``stream2llm serve`` / ``profile`` subcommands; ``launch.py``: start a whole
  server (both rooms) from Python for tests, the demo and replay;
* ``disagg/`` (prefill/decode split) and ``cluster/`` (several servers behind a router).
See docs/design.md, "Layout".
"""
