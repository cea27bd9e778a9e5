"""`.onnx` files: the graph read with `onnx`, run on onnxruntime (CUDA provider when asked for and present)."""
from __future__ import annotations

from pathlib import Path

import onnx

from chanaxis.errors import ChanaxisError

from .onnx_graph import read
from .onnx_runner import OnnxModel, providers_for


def load_proto(path: Path) -> onnx.ModelProto:
    """The model proto, local functions inlined; any unreadable file becomes one line saying so."""
    if not path.is_file():
        raise ChanaxisError(f"no ONNX file at '{path}'")
    try:
        mp = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError and friends for non-ONNX bytes
        raise ChanaxisError(f"'{path}' is not a readable ONNX model, or the file is truncated "
                            f"({type(e).__name__}); export it again") from None
    if not mp.graph.node or not mp.graph.output or not mp.opset_import:
        raise ChanaxisError(f"'{path}' is not an ONNX model (no graph in it), or the file is truncated")
    try:
        if mp.ByteSize() < 2**31 - 1:  # the in-memory checker refuses protos over 2 GiB
            onnx.checker.check_model(mp)
    except Exception as e:  # noqa: BLE001 - ValidationError: a truncated or hand-broken graph
        raise ChanaxisError(f"'{path}' is not a valid ONNX model, maybe truncated "
                            f"({str(e).strip().splitlines()[0][:160]})") from None
    if len(mp.functions):
        from onnx.inliner import inline_local_functions
        mp = inline_local_functions(mp)
    return mp


class OnnxAdapter:
    name = "onnx"
    priority = 30

    def can_open(self, spec) -> bool:
        return isinstance(spec, (str, Path)) and str(spec).lower().endswith(".onnx")

    def list_models(self, pattern: str = "*") -> list[str]:
        return []

    def open(self, spec, num_classes: int | None = None, image_size: int | None = None, device: str = "cpu",
             checkpoint=None, pretrained: bool = False, init_seed: int = 0) -> OnnxModel:
        """`init_seed` is accepted for a uniform call (training, analyze) and has no effect: the file has weights."""
        path = Path(spec).expanduser().resolve()
        if checkpoint is not None or pretrained:
            raise ChanaxisError("an ONNX file carries its own weights: --checkpoint and --pretrained apply to timm "
                                "and torch models only")
        providers_for(device)  # fail on a missing CUDA provider before the graph is read
        mp = load_proto(path)
        og = read(mp, str(path), image_size=image_size)
        if num_classes is not None and num_classes != og.num_classes:
            raise ChanaxisError(f"'{path.name}' outputs {og.num_classes} classes but {num_classes} were asked for "
                                f"(--num-classes or the data card's); an ONNX classifier cannot be resized: use a "
                                f"dataset with {og.num_classes} classes")
        spec_d = {"adapter": "onnx", "source": str(path), "name": path.name, "num_classes": og.num_classes,
                  "image_size": og.input_size[1], "folded_bn": bool(og.graph.folded_bn)}
        return OnnxModel(mp, og, spec_d, device=device)



def export_onnx(model, path, exporter: str = "dynamo", fold_bn: bool = True, kept_path=None) -> Path:
    """Export a TorchModel's module to `path` (eval mode, dynamic batch), BatchNorm folded into convs or kept.

    What keeps BN nodes: the legacy exporter folds them by constant folding in eval mode (`do_constant_folding=False`
    keeps them); the dynamo exporter folds them in the onnxscript optimizer's FuseBatchNormIntoConv rule
    (`optimize=False` keeps them). With `kept_path` (dynamo only), one export writes the unfolded graph there and
    the optimised, folded one to `path`: the dynamo exporter's translation is the slow part.
    """
    import contextlib
    import io
    import warnings

    import torch

    if exporter not in ("dynamo", "legacy"):
        raise ChanaxisError(f"unknown exporter '{exporter}'; use dynamo or legacy")
    module = model.module.eval()
    x = torch.zeros((2, *model.input_size), device=next(module.parameters()).device)
    names = dict(input_names=["input"], output_names=["logits"])
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            prog = torch.onnx.export(module, (x,), dynamo=True, optimize=False, verbose=False,
                                     dynamic_shapes=({0: torch.export.Dim("batch")},), **names)
            if kept_path is not None:
                prog.save(str(kept_path))
            if fold_bn:
                prog.optimize()
            prog.save(str(path))
        else:
            if kept_path is not None:
                raise ValueError("kept_path is for the dynamo exporter")
            torch.onnx.export(module, (x,), str(path), dynamo=False, do_constant_folding=fold_bn,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **names)
    return Path(path)
