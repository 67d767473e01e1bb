"""How the engine applies a weight matrix: ``x @ W.T (+ b)`` on one of two backends.

Why two: on CPU float32, oneDNN's linear with a weight packed once at load time
(``torch.ops.mkldnn._reorder_linear_weight`` / ``_linear_pointwise``, the pair
torch's inductor uses for frozen CPU models) is ~2x faster than MKL's sgemm
for the few-row GEMMs of decode (MKL re-packs the whole weight on every call)
and gives a row the same bits at every row count we measured (1..2048) except
M=1 for some K; the start-up probe (probe.py) checks exactly the counts used.
Everything else (float64, GPU, a torch without oneDNN) uses ``F.linear``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def onednn_packing_available(device: torch.device, dtype: torch.dtype) -> bool:
    """oneDNN packed linear exists for float32 CPU tensors in this torch build."""
    return (
        device.type == "cpu"
        and dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


@dataclass
class Linear:
    """A weight [out, in] and optional bias, applied by ``F.linear``."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


@dataclass
class PackedLinear(Linear):
    """The same matrix packed once into oneDNN's blocked layout (an opaque
    mkldnn tensor of the same size; ``weight`` holds it, the dense copy is freed)."""

    @classmethod
    def pack(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> PackedLinear:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)
        return cls(packed, bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [None], "")


def make_linear(weight: torch.Tensor, bias: torch.Tensor | None, packed: bool) -> Linear:
    return PackedLinear.pack(weight, bias) if packed else Linear(weight, bias)


def onednn_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T through oneDNN's linear with an unpacked (activation) right side."""
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [None], "")


def mkl_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.linear(a, b)
