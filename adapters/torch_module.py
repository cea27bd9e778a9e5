"""Any torch.nn.Module, handed over through the Python API."""
from __future__ import annotations

from torch import nn

from chanaxis.torch_model import TorchModel


class TorchAdapter:
    name = "torch"
    priority = 10

    def can_open(self, spec) -> bool:
        return isinstance(spec, nn.Module)

    def list_models(self) -> list[str]:
        return []

    def open(self, spec: nn.Module, num_classes: int | None = None, image_size: int = 32,
             input_size: tuple[int, int, int] | None = None, head: tuple[str, ...] | None = None,
             checkpoint=None, device: str = "cpu", **_ignored) -> TorchModel:
        input_size = tuple(input_size or (3, image_size, image_size))
        if checkpoint is not None:
            from ._checkpoint import load_into
            load_into(spec, checkpoint)
        if head is None:  # the last Linear is the classifier (not analysed)
            linears = [n for n, m in spec.named_modules() if isinstance(m, nn.Linear)]
            head = (linears[-1],) if linears else ()
        if num_classes is None:
            lin = [m for m in spec.modules() if isinstance(m, nn.Linear)]
            num_classes = lin[-1].out_features if lin else 0
        spec_d = {"adapter": "torch", "name": type(spec).__name__, "input_size": list(input_size),
                  "checkpoint": str(checkpoint) if checkpoint else None}
        return TorchModel(spec, input_size, num_classes, spec=spec_d, exclude_prefixes=tuple(head), device=device)
