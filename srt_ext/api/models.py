"""Request bodies of the REST API (pydantic: wrong types are a 422 with the field).

Our own stream endpoints forbid unknown fields (a typo like ``"finale"`` must
not be silently ignored); the SGLang- and OpenAI-compatible endpoints ignore
them, because existing clients (``sglang.bench_serving``, OpenAI SDKs) send
fields we do not use.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from srt_ext.messages import SamplingSpec


class SamplingParamsModel(BaseModel):
    """SGLang's sampling_params subset the reference engine honours."""

    model_config = ConfigDict(extra="ignore")

    max_new_tokens: int = Field(default=16, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=-1, ge=-1)  # -1 or 0 = off (SGLang uses -1)
    seed: int | None = Field(default=None, ge=0, lt=2**31)
    # SGLang's own name for the seed (what sglang-router forwards; it drops ``seed``)
    sampling_seed: int | None = Field(default=None, ge=0, lt=2**31)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    # SGLang's frontend (SglSamplingParams.to_srt_kwargs) always sends these, with
    # neutral defaults. The reference engine does not implement them: a neutral
    # value is accepted, anything else is a 422 instead of being silently ignored.
    min_new_tokens: int = 0
    n: int = 1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop_regex: str | list[str] | None = None
    regex: str | None = None
    json_schema: str | None = None
    ebnf: str | None = None

    @model_validator(mode="after")
    def _unsupported(self) -> SamplingParamsModel:
        neutral = {"min_new_tokens": 0, "n": 1, "min_p": 0.0, "frequency_penalty": 0.0,
                   "presence_penalty": 0.0}  # fmt: skip
        bad = [k for k, v in neutral.items() if getattr(self, k) != v]
        bad += [k for k in ("stop_regex", "regex", "json_schema", "ebnf") if getattr(self, k)]
        if bad:
            raise ValueError(f"not supported by the reference engine: {', '.join(bad)} "
                             "(use --engine sglang)")  # fmt: skip
        return self

    def spec(self) -> SamplingSpec:
        return SamplingSpec(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=max(self.top_k, 0),
            seed=self.seed if self.seed is not None else self.sampling_seed,
            ignore_eos=self.ignore_eos,
            stop_token_ids=[t for t in self.stop_token_ids or [] if t >= 0],
        )

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class _Input(BaseModel):
    """Exactly one of text / input_ids (both absent = an empty chunk)."""

    text: str | None = None
    input_ids: list[int] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> _Input:
        if self.text is not None and self.input_ids is not None:
            raise ValueError("give either text or input_ids, not both")
        if self.input_ids is not None and any(t < 0 for t in self.input_ids):
            raise ValueError("input_ids must be non-negative")
        return self


class OpenStreamRequest(_Input):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["append", "update"] = "append"
    sampling_params: SamplingParamsModel = Field(default_factory=SamplingParamsModel)
    final: bool = False
    rid: str | None = Field(default=None, min_length=1, max_length=128)


class ChunkRequest(_Input):
    model_config = ConfigDict(extra="forbid")

    final: bool = False
    # Optional: the mode the client believes the stream has. A mismatch (an
    # update-style whole-input chunk sent to an append stream, or the reverse)
    # is a client bug that would silently corrupt the input, so it is refused.
    mode: Literal["append", "update"] | None = None
    # Only with the final chunk: a frontend program knows its gen's parameters
    # only when retrieval ends. Replaces the parameters given at open.
    sampling_params: SamplingParamsModel | None = None


GRAMMAR_FIELDS = ("regex", "json_schema", "ebnf", "structural_tag")


class SGLangSamplingParamsModel(BaseModel):
    """Every API field of SGLang's ``SamplingParams`` (what its ``/generate`` takes),
    for the stream routes on SGLang's engine.

    Types are checked here (422 naming the field, unknown fields included: a typo
    must not be silently ignored); values are checked by SGLang itself
    (``SamplingParams.verify`` in its tokenizer manager: 400 with its reason).
    Defaults are our API's (docs/api.md), which the reference engine shares:
    16 new tokens, greedy. ``seed`` is our name for ``sampling_seed``."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = 16
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    stop_regex: str | list[str] | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1  # -1 or 0 = off (SGLang wants -1)
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    n: int = 1
    beam_width: int | None = None
    json_schema: str | None = None
    regex: str | None = None
    ebnf: str | None = None
    structural_tag: str | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    stream_interval: int | None = None
    logit_bias: dict[str, float] | None = None
    sampling_seed: int | None = None
    seed: int | None = None
    custom_params: dict[str, Any] | None = None
    watermark: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_seed(self) -> SGLangSamplingParamsModel:
        if None not in (self.seed, self.sampling_seed) and self.seed != self.sampling_seed:
            raise ValueError("seed and sampling_seed differ (give one of them)")
        return self

    def stream_error(self) -> str | None:
        """Why a stream cannot sample this (None when it can). A stream has one
        output (SGLang's ``n``/``beam_width`` would fan it out). Grammars are
        refused on streams for now: SGLang compiles one when it queues a request
        (its grammar queue, which our stream handlers do not follow yet) and never
        for sampling params replaced by a final chunk, so it would be ignored;
        ``/generate`` takes them."""
        if self.n != 1:
            return f"n={self.n}: a stream has one output (open one stream per sample)"
        if self.beam_width not in (None, 1):
            return f"beam_width={self.beam_width}: beam search is not supported on streams"
        grammar = [k for k in GRAMMAR_FIELDS if getattr(self, k) is not None]
        if grammar:
            return (f"{', '.join(grammar)}: constrained decoding is not supported on streams "
                    "yet (use /generate)")  # fmt: skip
        return None

    def sglang(self) -> dict[str, Any]:
        """SGLang's ``sampling_params`` dict: the fields set or defaulted by us, under
        SGLang's names (``seed`` -> ``sampling_seed``, ``top_k`` 0 -> -1)."""
        out = self.model_dump(exclude_none=True, exclude={"seed", "n", "beam_width"})
        out["top_k"] = self.top_k if self.top_k > 0 else -1
        seed = self.seed if self.seed is not None else self.sampling_seed
        if seed is not None:
            out["sampling_seed"] = seed
        if self.stop_token_ids is not None:
            out["stop_token_ids"] = [t for t in self.stop_token_ids if t >= 0]
        return out


class SGLangOpenStreamRequest(OpenStreamRequest):
    """``POST /v1/streams`` on SGLang's engine: SGLang's whole sampling vocabulary."""

    sampling_params: SGLangSamplingParamsModel = Field(default_factory=SGLangSamplingParamsModel)


class SGLangChunkRequest(ChunkRequest):
    """``POST /v1/streams/{rid}/chunks`` on SGLang's engine."""

    sampling_params: SGLangSamplingParamsModel | None = None


class GenerateRequest(_Input):
    """SGLang's /generate body (one prompt; batches are not supported)."""

    model_config = ConfigDict(extra="ignore")

    sampling_params: SamplingParamsModel = Field(default_factory=SamplingParamsModel)
    stream: bool = False
    rid: str | None = None
    return_logprob: bool = False
    # SGLang's free-form per-request map; sglang-router forwards it untouched, so
    # stream operations ride in it under "stream2llm" (srt_ext/cluster/envelope.py)
    session_params: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _no_logprobs(self) -> GenerateRequest:
        if self.return_logprob:  # sgl.select and logprob programs need them
            raise ValueError("return_logprob is not supported by the reference engine")
        return self


class _OpenAIRequest(BaseModel):
    """Fields the OpenAI completion and chat bodies share (one sample, no batches)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = -1
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)


class CompletionRequest(_OpenAIRequest):
    prompt: str | list[int] | list[str]
    max_tokens: int = Field(default=16, ge=1)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


def openai_sampling(req: _OpenAIRequest, max_tokens: int) -> SamplingParamsModel:
    return SamplingParamsModel(
        max_new_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
        top_k=req.top_k, seed=req.seed, stop=req.stop,
    )  # fmt: skip
