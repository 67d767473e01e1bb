"""The streaming radix tree: SGLang's RadixCache extended for streamed input."""

from radix_stream._sglang import ensure_sglang_importable

ensure_sglang_importable()
