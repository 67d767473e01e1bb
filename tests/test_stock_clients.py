"""SGLang's own frontend (``sgl.RuntimeEndpoint``) and the ``openai`` package,
unchanged, against both engines: the reference server and SGLang's own server
(``--engine sglang``). Each result is checked against the same server's
``/generate`` (greedy), so a client that silently got other tokens fails."""

from __future__ import annotations

import httpx
import openai
import pytest
from sglang_helpers import engine_url  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

PROMPT = "The streaming radix tree keeps"
N = 8


def _generate_text(url: str, text: str, n: int = N) -> str:
    r = httpx.post(url + "/generate", timeout=120,
                   json={"text": text, "sampling_params": {"max_new_tokens": n, "temperature": 0}})  # fmt: skip
    assert r.status_code == 200, r.text
    return str(r.json()["text"])


def test_model_info_routes(engine_url: tuple[str, str]) -> None:  # noqa: F811
    _, url = engine_url
    info = httpx.get(url + "/get_model_info", timeout=30).json()
    assert info["is_generation"] is True
    assert info["model_type"] == "llama"
    assert httpx.get(url + "/get_server_info", timeout=30).status_code == 200


def test_sgl_function_program(engine_url: tuple[str, str]) -> None:  # noqa: F811
    import sglang as sgl

    _, url = engine_url
    backend = sgl.RuntimeEndpoint(url)

    @sgl.function
    def program(s, question):  # type: ignore[no-untyped-def]
        s += question
        s += sgl.gen("answer", max_tokens=N, temperature=0)

    state = program.run(question=PROMPT, backend=backend)
    want = _generate_text(url, PROMPT)
    assert want and state["answer"] == want
    streamed = program.run(question=PROMPT, backend=backend, stream=True)
    assert "".join(streamed.text_iter("answer")) == want


def test_openai_client(engine_url: tuple[str, str]) -> None:  # noqa: F811
    engine, url = engine_url
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    models = client.models.list().data
    assert len(models) == 1
    model = models[0].id
    want = _generate_text(url, PROMPT)

    done = client.completions.create(model=model, prompt=PROMPT, max_tokens=N, temperature=0)  # fmt: skip
    assert done.choices[0].text == want
    assert done.usage is not None and 0 < done.usage.completion_tokens <= N

    parts = client.completions.create(model=model, prompt=PROMPT, max_tokens=N, temperature=0,
                                      stream=True)  # fmt: skip
    assert "".join(c.choices[0].text for c in parts if c.choices) == want

    chat = client.chat.completions.create(model=model, max_tokens=N, temperature=0,
                                          messages=[{"role": "user", "content": PROMPT}])  # fmt: skip
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason in ("length", "stop")
    assert chat.usage is not None and 0 < chat.usage.completion_tokens <= N

    pieces = client.chat.completions.create(model=model, max_tokens=N, temperature=0, stream=True,
                                            messages=[{"role": "user", "content": PROMPT}])  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
    assert text == chat.choices[0].message.content

    with pytest.raises(openai.APIStatusError) as bad:
        client.completions.create(model=model, prompt=PROMPT, max_tokens=-1)
    # ours: 422 with the field; SGLang's own server answers its validation errors with 400
    assert bad.value.status_code == (422 if engine == "reference" else 400)
    assert "max_tokens" in str(bad.value) or "max_new_tokens" in str(bad.value)


def test_frontend_fields_are_served_or_refused(engine_url: tuple[str, str]) -> None:  # noqa: F811
    """Sampling fields SGLang's frontend sends: SGLang honours them; the reference
    engine accepts their neutral values and refuses others (never ignores them)."""
    engine, url = engine_url
    neutral = {"max_new_tokens": 2, "temperature": 0, "min_p": 0.0, "n": 1, "regex": None,
               "frequency_penalty": 0.0, "json_schema": None, "stop_regex": []}  # fmt: skip
    assert httpx.post(url + "/generate", timeout=120,
                      json={"text": PROMPT, "sampling_params": neutral}).status_code == 200
    r = httpx.post(url + "/generate", timeout=120,
                   json={"text": PROMPT, "sampling_params": {**neutral, "min_p": 0.5}})
    if engine == "reference":
        assert r.status_code == 422 and "min_p" in r.text
    else:
        assert r.status_code == 200, r.text
    r = httpx.post(url + "/generate", timeout=120, json={"text": PROMPT, "return_logprob": True,
                                                         "sampling_params": {"max_new_tokens": 2}})
    if engine == "reference":
        assert r.status_code == 422 and "return_logprob" in r.text
    else:
        assert r.status_code == 200 and "output_token_logprobs" in r.json()["meta_info"]
