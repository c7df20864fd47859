"""Model registry: the paper's small nets and torchvision classifiers by name.

A registry is a dict, a decorator and ``build_model``; duplicate names raise.
Builders are keyword-only: ``num_classes``, ``in_channels`` and ``image_size``
come from the config and the data, extra keywords from ``model.kwargs``. An
architecture can also be an import path ``package.module:factory``, called
with ``num_classes=`` and ``model.kwargs``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from nhle_pipeline.pipeline.checkpoint import EXPORTED_PROGRAM, NOT_A_MODEL, TORCHSCRIPT
from nhle_pipeline.pipeline.errors import ModelError
from nhle_pipeline.pipeline.hf_folder import HF_ARCH, build_from_config
from nhle_pipeline.pipeline.logits_adapter import adapt_to_logits

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, Builder] = {}
# torchvision's stems downsample 32x: below this size we use CIFAR-style stems.
SMALL_IMAGE = 64
INCEPTION_MIN_SIZE = 75


def register(name: str) -> Callable[[Builder], Builder]:
    def wrap(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is already registered")
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


class MLP(nn.Module):
    """Flatten -> hidden Linear+ReLU blocks -> Linear head (the paper's MLP)."""

    def __init__(self, in_features: int, hidden: list[int], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, classes)
        return self.classifier(self.features(x))


class LeNet(nn.Module):
    """LeNet-5: two conv/pool blocks, then 120-84-classes fully connected."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
        self.fc = nn.Sequential(nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
        self.classifier = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(self.features(x)))


@register("mlp")
def _mlp(*, num_classes: int, in_channels: int, image_size: int, hidden: list[int] | None = None) -> nn.Module:
    return MLP(in_channels * image_size * image_size, list(hidden or [256, 128]), num_classes)


@register("lenet")
def _lenet(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    if image_size < 12:
        raise ModelError(f"model.arch: lenet needs images of at least 12x12, got {image_size}x{image_size}; use mlp")
    return LeNet(in_channels, image_size, num_classes)


def _first_conv(conv: nn.Conv2d, in_channels: int, **override: Any) -> nn.Conv2d:
    """A fresh conv like ``conv`` but with ``in_channels`` inputs (and overrides)."""
    args = dict(
        kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding, bias=conv.bias is not None
    )
    args.update(override)
    return nn.Conv2d(in_channels, conv.out_channels, **args)


def _vgg(factory: Callable[..., nn.Module], num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    m = factory(weights=None, num_classes=num_classes)
    m.features[0] = _first_conv(m.features[0], in_channels)
    if image_size < SMALL_IMAGE:  # CIFAR-style head: 512 features, no 7x7 upsampling
        m.avgpool = nn.AdaptiveAvgPool2d(1)
        m.classifier = nn.Sequential(
            nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(512, num_classes)
        )
    return m


@register("vgg16")
def _vgg16(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    from torchvision.models import vgg16

    return _vgg(vgg16, num_classes, in_channels, image_size)


@register("vgg16_bn")
def _vgg16_bn(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """VGG16 with BatchNorm after every convolution (the usual CIFAR VGG16): trains from
    scratch in a few one-cycle epochs where plain VGG16 barely moves (its loss 2.303 ->
    2.287 in 40 SGD steps at lr 0.05 on CIFAR-10)."""
    from torchvision.models import vgg16_bn

    return _vgg(vgg16_bn, num_classes, in_channels, image_size)


def _resnet(factory: Callable[..., nn.Module], num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    m = factory(weights=None, num_classes=num_classes)
    if image_size < SMALL_IMAGE:  # CIFAR-style stem: 3x3 stride 1, no max-pool
        m.conv1 = _first_conv(m.conv1, in_channels, kernel_size=3, stride=1, padding=1)
        m.maxpool = nn.Identity()
    else:
        m.conv1 = _first_conv(m.conv1, in_channels)
    return m


@register("resnet18")
def _resnet18(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    from torchvision.models import resnet18

    return _resnet(resnet18, num_classes, in_channels, image_size)


@register("resnet34")
def _resnet34(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    from torchvision.models import resnet34

    return _resnet(resnet34, num_classes, in_channels, image_size)


@register("mobilenet_v3_large")
def _mobilenet(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    from torchvision.models import mobilenet_v3_large

    m = mobilenet_v3_large(weights=None, num_classes=num_classes)
    stem = m.features[0][0]
    stride = 1 if image_size < SMALL_IMAGE else 2
    m.features[0][0] = _first_conv(stem, in_channels, stride=stride)
    return m


@register("inception_v3")
def _inception(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    from torchvision.models import inception_v3

    m = inception_v3(weights=None, num_classes=num_classes, aux_logits=False, init_weights=True)
    m.Conv2d_1a_3x3.conv = _first_conv(m.Conv2d_1a_3x3.conv, in_channels)
    if image_size < INCEPTION_MIN_SIZE:
        # Inception's stem needs >= 75 px: upsample small inputs inside the model.
        return nn.Sequential(nn.Upsample(size=(INCEPTION_MIN_SIZE, INCEPTION_MIN_SIZE), mode="bilinear"), m)
    return m


class SmallCNN(nn.Module):
    """Conv3x3-BN-ReLU-MaxPool blocks, one hidden Linear, then the head.

    Small enough to train on CIFAR-10 on two CPU cores in minutes (the
    benchmarks' ``cnn``); each block halves the image side.
    """

    def __init__(self, in_channels: int, image_size: int, channels: list[int], hidden: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for c in channels:
            layers += [nn.Conv2d(width, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            width = c
        side = image_size // 2 ** len(channels)  # 32 px, 3 blocks -> 4x4
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(width * side * side, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, classes)
        return self.classifier(self.fc(self.features(x)))


@register("cnn")
def _cnn(
    *, num_classes: int, in_channels: int, image_size: int, channels: list[int] | None = None, hidden: int = 128
) -> nn.Module:
    channels = list(channels or [16, 32, 64])
    if image_size < 2 ** len(channels):
        raise ModelError(f"model.arch: cnn with {len(channels)} blocks needs images of at least {2 ** len(channels)} px")
    return SmallCNN(in_channels, image_size, channels, hidden, num_classes)


# Model libraries whose own builders are called by name, with fixed arguments (no user code runs):
# "torchvision:resnet50" (every torchvision classification model), "timm:convnext_atto" (timm,
# an optional extra). The library's model is used as it is: no stem is swapped for small images.
LIBRARIES = ("torchvision", "timm")


def library_of(arch: str) -> str | None:
    """The model library ``arch`` names ("torchvision:resnet50" -> "torchvision"), or None."""
    lib, sep, name = arch.partition(":")
    return lib if sep and lib in LIBRARIES and name else None


def _close(name: str, names: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    return f"; close matches: {close}" if close else ""


# Builder arguments that would make a library read or fetch weights: the config's model.weights
# is the only weights a run (or verify's rebuild) loads.
LIBRARY_KWARGS_REFUSED = ("weights", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path",
                          "cache_dir", "progress")


def _library_builder(arch: str, in_channels: int) -> Builder:
    """The library's own builder for ``arch``, called with ``num_classes`` and ``model.kwargs``."""
    lib, _, name = arch.partition(":")
    if lib == "torchvision":
        from torchvision import models as tvm

        names = sorted(tvm.list_models(module=tvm))  # the classification models
        if name not in names:
            raise ModelError(f"model.arch: torchvision has no classification model '{name}'{_close(name, names)}")
        if in_channels != 3:
            raise ModelError(f"model.arch: torchvision's '{name}' takes 3-channel images, the data has {in_channels}")
        return lambda num_classes, **kw: tvm.get_model(name, weights=None, num_classes=num_classes, **kw)
    try:
        import timm
    except ImportError as e:
        raise ModelError(f"model.arch: '{arch}' needs timm (pip install 'nhle-pipeline[timm]')") from e
    names = timm.list_models()
    if name not in names:
        raise ModelError(f"model.arch: timm has no model '{name}'{_close(name, list(names))}")
    return lambda num_classes, **kw: timm.create_model(name, pretrained=False, num_classes=num_classes,
                                                        in_chans=in_channels, **kw)


def _import_factory(path: str) -> Builder:
    import os
    import sys

    module_name, _, attr = path.partition(":")
    cwd = os.getcwd()  # a factory module in the working folder, as `python -c` would find it
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelError(f"model.arch: cannot import module '{module_name}' ({e})") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ModelError(f"model.arch: '{module_name}' has no callable '{attr}'")
    return fn


def build_model(
    arch: str,
    *,
    num_classes: int,
    input_shape: tuple[int, int, int],
    kwargs: dict[str, Any] | None = None,
    trust_code: bool = False,
) -> nn.Module:
    """Build ``arch`` for ``num_classes`` outputs and ``(C, H, W)`` inputs; check the output width.

    A ``module:factory`` architecture imports and runs code: only with ``trust_code``
    (``model.trust_code: true`` or ``--trust-code``); otherwise nothing is imported.
    """
    c, h, w = input_shape
    kwargs = dict(kwargs or {})
    if library_of(arch):
        refused = sorted(set(kwargs) & set(LIBRARY_KWARGS_REFUSED))
        if refused:
            raise ModelError(f"model.kwargs: {refused} would make {arch.split(':')[0]} load or fetch weights; "
                             "give the weights in model.weights")
        fn = _library_builder(arch, c)
        call = lambda: fn(num_classes=num_classes, **kwargs)  # noqa: E731
    elif arch == HF_ARCH:
        if set(kwargs) != {"config"}:
            raise ModelError(f"model.kwargs: model.arch {HF_ARCH} takes its architecture from the folder's config.json "
                             f"(model.weights); got kwargs {sorted(kwargs)}")
        call = lambda: build_from_config(kwargs["config"], num_classes)  # noqa: E731
    elif ":" in arch:
        if not trust_code:
            raise ModelError(
                f"model.arch: '{arch}' imports and runs code; set model.trust_code: true "
                "(or pass --trust-code) only for a module you trust"
            )
        fn = _import_factory(arch)
        call = lambda: fn(num_classes=num_classes, **kwargs)  # noqa: E731
    elif arch in _REGISTRY:
        if h != w:
            raise ModelError(f"model.arch: {arch} expects square images, got {h}x{w}")
        call = lambda: _REGISTRY[arch](num_classes=num_classes, in_channels=c, image_size=h, **kwargs)  # noqa: E731
    else:
        raise ModelError(f"model.arch: unknown architecture '{arch}'{_close(arch, list_models())}; expected one of "
                         f"{list_models()}, 'torchvision:NAME', 'timm:NAME', '{HF_ARCH}' or 'module:factory'")
    given = "its config.json" if arch == HF_ARCH else kwargs  # a builder's arguments, as an error names them
    try:
        model = call()
    except (TypeError, ValueError, RuntimeError) as e:  # bad kwargs: unknown names, negative widths, ...
        raise ModelError(f"model.kwargs: {arch} cannot be built with {given} ({str(e).splitlines()[0]})") from e
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - a library's builder may raise anything: it is the input's fault
        if not library_of(arch) and arch != HF_ARCH:
            raise
        raise ModelError(f"model.arch: {arch} failed to build with {given} "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if not isinstance(model, nn.Module):
        raise ModelError(f"model.arch: '{arch}' returned {type(model).__name__}, expected a torch.nn.Module")
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelError(f"model.arch: '{arch}' returned {TORCHSCRIPT}; {NOT_A_MODEL} (and its weights, the "
                         "program's file, in model.weights with model.trust_pickle: true)")
    try:
        model.eval()
    except NotImplementedError as e:  # torch.export's ExportedProgram.module(): no train/eval switch
        raise ModelError(f"model.arch: '{arch}' returned a module without a train/eval mode ({e}), as "
                         f"{EXPORTED_PROGRAM}'s module() is; {NOT_A_MODEL}") from e
    with torch.no_grad():
        try:
            out = model(torch.zeros(2, c, h, w))
        except (RuntimeError, ValueError) as e:  # ValueError: transformers' checks of the image size
            raise ModelError(f"model.arch: '{arch}' cannot take inputs of shape {(c, h, w)} ({str(e).splitlines()[0]})") from e
        if adapt_to_logits(model, out) is not None:  # a ModelOutput, dict or tuple: its logits
            out = model(torch.zeros(2, c, h, w))
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise ModelError(
            f"model.num_classes: {num_classes}, but '{arch}' outputs shape {tuple(out.shape[1:])}"
        )
    return model


Head = nn.Linear | nn.Conv2d


def _is_head_type(m: nn.Module, num_classes: int) -> bool:
    if isinstance(m, nn.Linear):
        return m.out_features == num_classes
    return isinstance(m, nn.Conv2d) and m.out_channels == num_classes and m.kernel_size == (1, 1) and m.groups == 1


def find_head(model: nn.Module, num_classes: int, name: str | None = None) -> tuple[str, Head]:
    """The classifier head: ``name`` if given, else the last nn.Linear with ``num_classes`` outputs
    (or, with none, the last 1x1 nn.Conv2d with as many output channels)."""
    modules = dict(model.named_modules())
    if name is not None:
        head = modules.get(name)
        if not isinstance(head, nn.Linear | nn.Conv2d):
            layers = [n for n, m in modules.items() if isinstance(m, nn.Linear | nn.Conv2d) and _is_head_type(m, num_classes)]
            raise ModelError(f"model.head: '{name}' is not an nn.Linear or 1x1 nn.Conv2d of the model; "
                             f"layers with {num_classes} outputs: {layers}")
        if not _is_head_type(head, num_classes):
            width = head.out_features if isinstance(head, nn.Linear) else head.out_channels
            raise ModelError(f"model.head: '{name}' has {width} outputs (or is not a 1x1 convolution), "
                             f"expected {num_classes}")
        return name, head
    found = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear) and _is_head_type(m, num_classes)]
    found = found or [(n, m) for n, m in modules.items() if isinstance(m, nn.Conv2d) and _is_head_type(m, num_classes)]
    if not found:
        raise ModelError(f"model.head: no nn.Linear (or 1x1 nn.Conv2d) with {num_classes} outputs found; "
                         "name it in model.head")
    return found[-1]


@torch.no_grad()
def feeds_each_logit(model: nn.Module, layer: nn.Module, input_shape: tuple[int, int, int], num_classes: int) -> bool:
    """Does ``layer``'s output channel c reach logit c alone? A push of one channel moves that
    logit and no other (a head, or one of several combined heads); a hidden layer that happens to
    have ``num_classes`` units moves several."""
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    base = model(x)
    moved = []
    for c in (0, num_classes - 1):
        def push(_m, _i, out, c=c):
            out = out.clone()
            out[:, c] += 100.0
            return out

        h = layer.register_forward_hook(push)
        try:
            diff = (model(x) - base).abs()
        finally:
            h.remove()
        others = torch.cat([diff[:, :c], diff[:, c + 1:]], dim=1)
        tol = 1e-4 * (1 + base.abs().max())
        moved.append(bool(diff[:, c].min() > 1.0 and (others.numel() == 0 or others.max() <= tol)))
    return all(moved)


def find_heads(model: nn.Module, num_classes: int, names: str | list[str] | None,
               input_shape: tuple[int, int, int]) -> list[str]:
    """Every head CWM must mask, the primary first (see ``model.head`` in the config)."""
    if names is not None:
        listed = [names] if isinstance(names, str) else list(names)
        if not listed or len(set(listed)) != len(listed):
            raise ModelError(f"model.head: expected one name or a list of distinct names, got {names!r}")
        for n in listed:
            find_head(model, num_classes, n)
        return listed
    primary, _ = find_head(model, num_classes)
    was = model.training
    model.eval()
    try:
        others = [n for n, m in model.named_modules() if n != primary and isinstance(m, nn.Linear | nn.Conv2d)
                  and _is_head_type(m, num_classes) and feeds_each_logit(model, m, input_shape, num_classes)]
    finally:
        model.train(was)
    return [primary, *others]
