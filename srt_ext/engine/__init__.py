"""The reference engine: a PyTorch Llama forward over SGLang's KV pool (issue 4)."""

from srt_ext.engine.reference import ForwardItem, ProfilePoint, ReferenceEngine
from srt_ext.engine.tiny_model import ensure_tiny_model

__all__ = ["ForwardItem", "ProfilePoint", "ReferenceEngine", "ensure_tiny_model"]
