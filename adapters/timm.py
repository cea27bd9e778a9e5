"""timm models by name, with METHOD §8's small-image adaptations."""
from __future__ import annotations

import fnmatch

import timm
import torch
from torch import nn

from chanaxis.errors import ChanaxisError
from chanaxis.torch_model import TorchModel

# The families the paper studies; any other timm conv model also opens.
FEATURED = ("resnet18", "vgg16_bn", "mobilenetv2_100", "convnext_tiny")
SMALL_IMAGE_MAX = 64  # (chosen) at or below this size the 32×32 stems of METHOD §8 are used
_HEAD_NAMES = ("fc", "head", "classifier", "pre_logits", "head_drop", "global_pool")


def adapt_small_image(model: nn.Module, num_classes: int, image_size: int) -> list[str]:
    """METHOD §8: ResNet 3×3 stride-1 stem without max-pool; MobileNetV2 stride-1 stem; CIFAR-style VGG head."""
    done = []
    if image_size <= SMALL_IMAGE_MAX and type(model).__name__ == "ResNet" and isinstance(model.conv1, nn.Conv2d):
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
        done.append("resnet_3x3_stem_no_maxpool")
    if image_size <= SMALL_IMAGE_MAX and type(model).__name__ == "EfficientNet" and hasattr(model, "conv_stem"):
        model.conv_stem.stride = (1, 1)
        done.append("stride1_stem")
    if image_size < 224 and type(model).__name__ == "VGG":
        # timm's VGG head is a 7×7 ConvMlp made for 224 px; small images get a global-pool + linear head
        from timm.layers import ClassifierHead
        width = model.num_features if hasattr(model, "num_features") else 512
        feat = [m for m in model.features.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
        model.pre_logits = nn.Identity()
        model.head = ClassifierHead(feat, num_classes, pool_type="avg")
        model.num_features = feat
        del width
        done.append("cifar_vgg_head")
    return done


def smallest_image_size(model: nn.Module, failing: int, limit: int = 1024) -> int | None:
    """When `model` fails on one `failing`×`failing` zero image but runs on a larger one (≤ `limit`), the smallest
    size it runs on; else None (the failure is not the image size).

    Sizes are doubled until one runs, then bisected; only called after a model failed to open.
    """
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    was_training = model.training
    model.eval()  # batch norm in training mode cannot take one 1×1 map

    def runs(size: int) -> bool:
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size, device=device))
            return True
        except RuntimeError:
            return False

    try:
        if runs(failing):
            return None
        lo, ok = failing, None
        while ok is None and lo < limit:
            size = min(2 * max(lo, 1), limit)
            if runs(size):
                ok = size
            else:
                lo = size
        if ok is None:
            return None
        while ok - lo > 1:
            mid = (lo + ok) // 2
            if runs(mid):
                ok = mid
            else:
                lo = mid
        return ok
    finally:
        model.train(was_training)


class TimmAdapter:
    name = "timm"
    priority = 40
    # (chosen) no timm conv network is analysed below 8 px, the smallest dataset image (digits); a model that
    # downsamples more needs larger images: `open` then names its own smallest size
    min_image_size = 8

    def can_open(self, spec) -> bool:
        return isinstance(spec, str) and timm.is_model(spec)

    def list_models(self, pattern: str = "*") -> list[str]:
        return [n for n in timm.list_models() if fnmatch.fnmatch(n, pattern)]

    def open(self, spec: str, num_classes: int = 1000, image_size: int = 224, pretrained: bool = False,
             checkpoint=None, small_image: bool | None = None, device: str = "cpu", init_seed: int = 0) -> TorchModel:
        try:
            # a seeded initialisation: the same spec always gives the same random weights (and weight hash)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)
                model = timm.create_model(spec, pretrained=pretrained, num_classes=num_classes)
                adaptations = adapt_small_image(model, num_classes, image_size) if small_image is not False else []
        except Exception as e:  # noqa: BLE001 - a download failure must become one clear line
            if pretrained:
                raise ChanaxisError(f"cannot fetch pretrained weights for '{spec}' ({type(e).__name__}); without "
                                    "network access pass --checkpoint FILE or drop --pretrained") from None
            raise
        loaded = None
        if checkpoint is not None:
            from chanaxis.checkpoints import load_into
            loaded = load_into(model, checkpoint)
        cls_name = model.default_cfg.get("classifier", "fc") if hasattr(model, "default_cfg") else "fc"
        head = tuple({cls_name.split(".")[0], *[n for n, _ in model.named_children() if n in _HEAD_NAMES]})
        spec_d = {"adapter": "timm", "name": spec, "num_classes": num_classes, "image_size": image_size,
                  "pretrained": bool(pretrained), "init_seed": init_seed, "checkpoint": str(checkpoint) if checkpoint else None,
                  "adaptations": adaptations, "unexpected_keys": (loaded or {}).get("unexpected", [])}
        try:
            return TorchModel(model, (3, image_size, image_size), num_classes, spec=spec_d, exclude_prefixes=head,
                              device=device)
        except RuntimeError as e:  # e.g. "Kernel size can't be greater than actual input size": too small an image?
            if isinstance(e, torch.cuda.OutOfMemoryError):
                raise
            smallest = smallest_image_size(model, image_size)
            if smallest is None:
                raise
            raise ChanaxisError(f"'{spec}' cannot take {image_size}×{image_size} images: its feature maps shrink "
                                f"below its kernels; the smallest image it takes is {smallest} px (image_size / "
                                f"--image-size {smallest} or more)") from None
