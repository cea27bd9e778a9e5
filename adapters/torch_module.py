"""Any torch.nn.Module, handed over through the Python API."""
from __future__ import annotations

from torch import nn

from chanaxis.errors import ChanaxisError
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
             checkpoint=None, device: str = "cpu", pretrained: bool = False, init_seed: int = 0) -> TorchModel:
        """`init_seed` is accepted for a uniform call (training, analyze) and has no effect: the module is built."""
        if pretrained:
            raise ChanaxisError("a torch.nn.Module comes with its own weights: pretrained applies to timm names only; "
                                "load the weights into the module, or pass checkpoint=FILE")
        input_size = tuple(input_size or (3, image_size, image_size))
        if checkpoint is not None:
            from chanaxis.checkpoints import load_into
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
