"""SGLang's own prefill/decode disaggregation with stream2llm: our ZMQ KV transfer
backend (``backend``, ``zmq_engine``), a PD pair launcher (``launch``) and the
stream path through it. See docs/disaggregation.md."""
