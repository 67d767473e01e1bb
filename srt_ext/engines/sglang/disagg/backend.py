"""``--disaggregation-transfer-backend zmq``: SGLang's PD KV manager, sender, receiver
and bootstrap server with our ZMQ transfer engine underneath.

SGLang 0.5.23 picks a backend's classes with
``sglang.srt.disaggregation.utils.get_kv_class(TransferBackend(name), kind)``.
:func:`register` (run by our ``sglang.srt.plugins`` entry point in every SGLang
process) makes ``zmq`` one of those names:

* ``add_disagg_transfer_backend_choices(["zmq"])``: the CLI choice (the plugin
  point ``server_args`` exports for this);
* a ``ZMQ`` member on the ``TransferBackend`` enum, so ``TransferBackend("zmq")``
  works where SGLang converts the option (scheduler, disagg service);
* an AROUND hook on ``get_kv_class`` (``HookRegistry``, which also rebinds the
  modules that imported it by name) answering our classes for ``ZMQ``.

The classes reuse SGLang's Mooncake protocol (bootstrap HTTP registry, decode
registration, per-room transfer info, status and abort messages, heartbeats),
which is written against a transfer engine; ``init_engine`` puts our
:class:`ZmqTransferEngine` there instead of Mooncake's RDMA engine, as SGLang's
own Ascend backend does with its engine. Every KV page, the first-token metadata
(aux buffers) and any state buffer moves as a ZMQ write into memory the peer
registered; nothing needs a NIC or a GPU.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

BACKEND = "zmq"
GET_KV_CLASS = "sglang.srt.disaggregation.utils.get_kv_class"

_classes: dict[Any, type] | None = None


def _build_classes() -> dict[Any, type]:
    from sglang.srt.disaggregation.mooncake.conn import (
        MooncakeKVBootstrapServer,
        MooncakeKVManager,
        MooncakeKVReceiver,
        MooncakeKVSender,
    )
    from sglang.srt.disaggregation.utils import KVClassType

    from srt_ext.engines.sglang.disagg.zmq_engine import ZmqTransferEngine

    class ZmqKVManager(MooncakeKVManager):
        """SGLang's KV manager on a :class:`ZmqTransferEngine` (host memory over TCP)."""

        def init_engine(self) -> None:
            self.engine = ZmqTransferEngine(self.local_ip)

        def teardown(self) -> None:
            super().teardown()
            self.engine.close()

    class ZmqKVSender(MooncakeKVSender):
        # page indices as numpy on the scheduler thread: Mooncake's host-tensor
        # path stages them in pinned memory with a CUDA event (no CPU allocator)
        supports_host_tensor_indices = False

    class ZmqKVReceiver(MooncakeKVReceiver):
        pass

    class ZmqKVBootstrapServer(MooncakeKVBootstrapServer):
        pass

    for cls in (ZmqKVManager, ZmqKVSender, ZmqKVReceiver, ZmqKVBootstrapServer):
        cls.__module__ = __name__
    return {
        KVClassType.MANAGER: ZmqKVManager,
        KVClassType.SENDER: ZmqKVSender,
        KVClassType.RECEIVER: ZmqKVReceiver,
        KVClassType.BOOTSTRAP_SERVER: ZmqKVBootstrapServer,
    }


def kv_classes() -> dict[Any, type]:
    global _classes
    if _classes is None:
        _classes = _build_classes()
    return _classes


def get_kv_class_around(original: Any, transfer_backend: Any, class_type: Any) -> Any:
    """AROUND ``get_kv_class``: our classes for ``TransferBackend.ZMQ``."""
    from sglang.srt.disaggregation.utils import KVClassType

    if getattr(transfer_backend, "value", transfer_backend) == BACKEND \
            and class_type != KVClassType.KVARGS:  # fmt: skip
        return kv_classes().get(class_type)
    return original(transfer_backend, class_type)


def _extend_transfer_backend_enum() -> None:
    """Add ``TransferBackend.ZMQ = "zmq"`` (Python's Enum has no public way to grow;
    this sets the same tables ``EnumType`` fills for a declared member)."""
    from sglang.srt.disaggregation.utils import TransferBackend

    if BACKEND in TransferBackend._value2member_map_:
        return
    member = object.__new__(TransferBackend)
    member._name_ = "ZMQ"
    member._value_ = BACKEND
    member.__objclass__ = TransferBackend
    TransferBackend._member_map_["ZMQ"] = member
    TransferBackend._value2member_map_[BACKEND] = member
    TransferBackend._member_names_.append("ZMQ")
    type.__setattr__(TransferBackend, "ZMQ", member)


def register() -> None:
    """Make ``--disaggregation-transfer-backend zmq`` a backend SGLang can load, and
    install the PD stream hooks (``streams.hooks``; inert off a PD prefill server).
    Idempotent; called from ``srt_ext.engines.sglang.plugin.register``."""
    from sglang.srt.arg_groups.choices import DISAGG_TRANSFER_BACKEND_CHOICES
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType
    from sglang.srt.server_args import add_disagg_transfer_backend_choices

    if BACKEND not in DISAGG_TRANSFER_BACKEND_CHOICES:
        add_disagg_transfer_backend_choices([BACKEND])
    _extend_transfer_backend_enum()
    from srt_ext.engines.sglang.disagg import streams

    for target, hook, kind in [(GET_KV_CLASS, get_kv_class_around, "AROUND"), *streams.hooks()]:
        if not any(h is hook for _, h, _ in HookRegistry._hooks.get(target, [])):
            HookRegistry.register(target, hook, HookType[kind])
