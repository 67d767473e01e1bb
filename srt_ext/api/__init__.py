"""The API room: the HTTP process (routes, tokenizer, limits, the link to the worker)."""
