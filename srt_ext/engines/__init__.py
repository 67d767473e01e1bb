"""Model engines: ``reference`` (our PyTorch forward over SGLang's KV pool, driven by our
worker) and ``sglang`` (the plugin that runs our tree and policies inside SGLang's own scheduler)."""
