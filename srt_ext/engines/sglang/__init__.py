"""stream2llm inside SGLang's own scheduler (the ``--engine sglang`` path).

Everything here runs in SGLang's scheduler process and plugs in through SGLang
0.5.23's own extension points (the plugin ``HookRegistry``, the request
dispatcher, ``get_prefill_adder_class``, the decode retraction order), so the
GPU run uses SGLang's model runner unchanged. See docs/sglang-engine.md.
"""
