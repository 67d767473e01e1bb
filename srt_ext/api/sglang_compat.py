"""The info routes SGLang's own clients call before ``/generate``.

``sgl.RuntimeEndpoint(url)`` (the frontend language) reads ``GET /get_model_info``
in its constructor and may call ``/get_server_info``, ``/server_info`` and
``GET /flush_cache``; SGLang's server answers them, so ours does too, in the same
shape for the fields clients read (``model_path``, ``is_generation``, ...).
Requests these routes cannot serve faithfully (logprobs, grammar constraints,
penalties) are refused by the request models (``srt_ext.api.models``) with a 422 rather
than silently ignored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from srt_ext.api.req_state import WorkerError
from srt_ext.api.service import Service


def _hf_config(model_path: str) -> dict[str, Any]:
    try:
        return dict(json.loads((Path(model_path) / "config.json").read_text()))
    except (OSError, ValueError):
        return {}


def model_info(model_path: str, served_name: str) -> dict[str, Any]:
    """SGLang's ``/model_info`` fields that describe a plain text model."""
    cfg = _hf_config(model_path)
    return {
        "model_path": model_path, "served_model_name": served_name,
        "tokenizer_path": model_path, "is_generation": True,
        "preferred_sampling_params": None, "weight_version": "default",
        "load_format": "auto", "reasoning_parser": None, "tool_call_parser": None,
        "disaggregation_mode": "null", "has_image_understanding": False,
        "has_audio_understanding": False, "model_type": cfg.get("model_type"),
        "architectures": cfg.get("architectures"), "engine": "reference",
    }  # fmt: skip


def add_sglang_info_routes(app: FastAPI, svc_of: Callable[[Request], Service], model_path: str,
                           served_name: str, server_args: dict[str, Any]) -> None:  # fmt: skip
    info = model_info(model_path, served_name)

    async def get_model_info() -> dict[str, Any]:
        return info

    async def get_server_info(request: Request) -> dict[str, Any]:
        try:
            state = await svc_of(request).stats()
        except WorkerError:
            state = {}

        return {**server_args, "model_path": model_path, "engine": "reference",
                "internal_states": [state], "version": _sglang_version()}  # fmt: skip

    async def flush_cache_get(request: Request) -> dict[str, Any]:
        return {"flushed_tokens": await svc_of(request).flush_cache()}

    for path in ("/get_model_info", "/model_info"):
        app.add_api_route(path, get_model_info, methods=["GET"])
    for path in ("/get_server_info", "/server_info"):
        app.add_api_route(path, get_server_info, methods=["GET"])
    app.add_api_route("/flush_cache", flush_cache_get, methods=["GET"])


def _sglang_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sglang")
    except PackageNotFoundError:
        return "unknown"
