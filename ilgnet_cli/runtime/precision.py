"""The number formats the model runs in, named once.

``fp32`` is Caffe's; ``bf16`` is a bf16 copy of the weights fed bf16 inputs (channels_last,
inference mode), not autocast, which on CPUs re-casts every operand and was measured slower than
fp32. ``auto`` is what a scoring run asks for: bf16 where the device computes it natively and the
fidelity gate (:mod:`ilgnet_cli.predict.gate`) finds it faithful for these weights, else fp32.
Training's mixed precision (bf16 autocast on CUDA) is a flag of its own, not a precision here.
"""

from __future__ import annotations

import copy
from enum import Enum
from typing import TYPE_CHECKING

from ilgnet_cli.errors import UsageError

if TYPE_CHECKING:
    import torch


class Precision(str, Enum):
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"

    @classmethod
    def parse(cls, value: str | Precision) -> Precision:
        try:
            return cls(value)
        except ValueError:
            raise UsageError(f"precision must be one of {', '.join(p.value for p in cls)} "
                             f"(got {str(value)[:20]!r})") from None


def bf16_model(model: torch.nn.Module) -> torch.nn.Module:
    """A bf16, channels_last, eval-mode copy of ``model`` (the fp32 one is kept for checks).

    Each parameter is cast straight into the copy: copying 600 MB of fp32 first and casting it
    after took three times as long, paid at the start of every bf16 run."""
    import torch

    memo: dict[int, object] = {id(p): torch.nn.Parameter(p.detach().to(torch.bfloat16, copy=True),
                                                         requires_grad=False)
                               for p in model.parameters()}
    clone = copy.deepcopy(model, memo)
    return clone.to(dtype=torch.bfloat16).to(memory_format=torch.channels_last).eval()
