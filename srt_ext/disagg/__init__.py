"""Prefill/decode disaggregation over ZMQ (issue 4): KV export/import and the link.

See docs/disaggregation.md for the design and how it maps onto SGLang's own
``--disaggregation-mode prefill|decode``.
"""

from srt_ext.disagg.export import KVImportError, StreamKV, export_stream, import_stream
from srt_ext.disagg.link import DecodeUnavailable, KVReceiver, KVSender, TransferRejected
from srt_ext.disagg.wire import TransferError

__all__ = [
    "DecodeUnavailable", "KVImportError", "KVReceiver", "KVSender", "StreamKV",
    "TransferError", "TransferRejected", "export_stream", "import_stream",
]  # fmt: skip
