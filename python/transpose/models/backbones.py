"""Image backbones in plain torch: GoogLeNet (Inception v1), ResNet34 and EfficientNet-B0.

The module trees follow torchvision's exactly (same submodule names, same parameter shapes and
counts), so an ImageNet state dict saved by torchvision (``torchvision.models.resnet34(...)
.state_dict()`` written with ``torch.save``) loads with :func:`load_backbone_weights` without
torchvision being installed. Parameter counts (as ``sum(p.numel() for p in m.parameters())``):

=====================================  ===========
ResNet34                               21,797,672
EfficientNet-B0                         5,288,548
GoogLeNet, ``aux_logits=False``         6,624,904
GoogLeNet, ``aux_logits=True``         13,004,888
=====================================  ===========

GoogLeNet keeps torchvision's known deviation from the paper (the "5x5" branch uses a 3x3
convolution, pytorch/vision#906) because the ImageNet weights were trained that way.

Feature entry points used by the pose regressors:

- ``GoogLeNet.forward_features(x)`` -> dict ``pooled (B, 1024)`` and, in train mode with aux
  heads, ``aux1 (B, 512, H/16, W/16)``, ``aux2 (B, 528, H/16, W/16)`` (inputs of the aux heads).
- ``ResNet.forward_features(x)`` -> dict ``pooled (B, 512)``, ``layer4 (B, 512, H/32, W/32)``.
- ``EfficientNet.extract_endpoints(x)`` -> dict ``reduction_1`` ... ``reduction_5`` and ``pooled``
  (naming of the efficientnet_pytorch package that MS-Transformer used: ``reduction_3`` is
  40 channels at stride 8, ``reduction_4`` 112 channels at stride 16 for B0).
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BasicConv2d", "Inception", "InceptionAux", "GoogLeNet", "googlenet",
    "BasicBlock", "ResNet", "resnet34",
    "MBConv", "EfficientNet", "efficientnet_b0",
    "count_parameters", "load_backbone_weights", "build_backbone",
]


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not, buffers excluded), as torchvision reports it."""
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- GoogLeNet

@torch.no_grad()
def _truncated_normal_(tensor: torch.Tensor, std: float, cutoff: float = 2.0) -> torch.Tensor:
    """Normal(0, std) cut at ``cutoff`` std by redrawing the outliers (faster than erfinv-based init)."""
    flat = torch.randn(tensor.numel(), dtype=tensor.dtype)
    outside = torch.nonzero(flat.abs() > cutoff).squeeze(1)
    while outside.numel():
        redraw = torch.randn(outside.numel(), dtype=tensor.dtype)
        flat[outside] = redraw
        outside = outside[redraw.abs() > cutoff]
    tensor.copy_(flat.view_as(tensor) * std)
    return tensor


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm (eps 1e-3) + ReLU; keys ``conv.*``, ``bn.*``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """Inception v1 block: four parallel branches concatenated on channels."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int,
                 ch5x5: int, pool_proj: int) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(in_channels, ch3x3red, 1),
                                     BasicConv2d(ch3x3red, ch3x3, 3, padding=1))
        # 3x3 where the paper has 5x5: torchvision's ImageNet weights were trained like this.
        self.branch3 = nn.Sequential(BasicConv2d(in_channels, ch5x5red, 1),
                                     BasicConv2d(ch5x5red, ch5x5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                     BasicConv2d(in_channels, pool_proj, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary head: pool to 4x4, 1x1 conv to 128, fc 2048->1024, dropout 0.7, fc 1024->classes."""

    def __init__(self, in_channels: int, num_classes: int = 1000, dropout: float = 0.7) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, 1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = dropout

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> ``(B, 1024)``: the head up to (and including) fc1 + ReLU."""
        x = F.adaptive_avg_pool2d(x, (4, 4))
        x = torch.flatten(self.conv(x), 1)
        return F.relu(self.fc1(x), inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(self.features(x), self.dropout, training=self.training)
        return self.fc2(x)


class GoogLeNet(nn.Module):
    """Inception v1 with torchvision's module names. Input ``(B, 3, H, W)``, ImageNet-normalized.

    ``transform_input=True`` re-maps ImageNet-normalized input to the ``[-1, 1]`` scaling that
    torchvision's ported (TensorFlow) GoogLeNet weights expect; torchvision enables it when it
    loads those weights, so do the same when you load them here.
    """

    def __init__(self, num_classes: int = 1000, aux_logits: bool = True, transform_input: bool = False,
                 dropout: float = 0.2, init_weights: bool = True) -> None:
        super().__init__()
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        self.conv1 = BasicConv2d(3, 64, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, 1)
        self.conv3 = BasicConv2d(64, 192, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
        self.aux1: Optional[InceptionAux] = InceptionAux(512, num_classes) if aux_logits else None
        self.aux2: Optional[InceptionAux] = InceptionAux(528, num_classes) if aux_logits else None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)
        self.num_features = 1024
        if init_weights:
            self._initialize_weights()

    def _initialize_weights(self) -> None:
        # torchvision: truncated normal, std 0.01, cut at 2 std (scipy's truncnorm(-2, 2)).
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                _truncated_normal_(m.weight, std=0.01)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.transform_input:
            return x
        mean = torch.tensor([0.485, 0.456, 0.406], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return x * (std / 0.5) + (mean - 0.5) / 0.5

    def forward_features(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``(B, 3, H, W)`` -> dict ``pooled (B, 1024)`` and, in train mode with aux heads,
        ``aux1 (B, 512, H/16, W/16)`` and ``aux2 (B, 528, H/16, W/16)`` (the aux heads' inputs)."""
        out: Dict[str, torch.Tensor] = {}
        x = self._transform_input(x)
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        if self.aux1 is not None and self.training:
            out["aux1"] = x
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        if self.aux2 is not None and self.training:
            out["aux2"] = x
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        out["pooled"] = torch.flatten(self.avgpool(x), 1)
        return out

    def forward(self, x: torch.Tensor):
        """Logits ``(B, classes)``; in train mode with aux heads ``(logits, aux2, aux1)`` like torchvision."""
        feats = self.forward_features(x)
        logits = self.fc(self.dropout(feats["pooled"]))
        if self.training and self.aux_logits:
            return logits, self.aux2(feats["aux2"]), self.aux1(feats["aux1"])
        return logits


def googlenet(aux_logits: bool = True, **kwargs) -> GoogLeNet:
    """GoogLeNet with torchvision's layout (``aux_logits=True`` adds ``aux1``/``aux2``)."""
    return GoogLeNet(aux_logits=aux_logits, **kwargs)


# --------------------------------------------------------------------------- ResNet

class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; ``downsample`` (1x1 conv + BN) when the shape changes."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: Optional[nn.Sequential] = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with BasicBlocks (ResNet18/34 layout of torchvision).

    ``width`` is the channel count of ``layer1`` (64 in torchvision); a smaller value gives a
    narrow network for quick experiments (its state dict then no longer matches ImageNet weights).
    """

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), num_classes: int = 1000, width: int = 64) -> None:
        super().__init__()
        if len(layers) != 4 or width < 1:
            raise ValueError(f"ResNet: layers must have 4 entries and width >= 1, got {layers}, {width}")
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = [width, 2 * width, 4 * width, 8 * width]
        in_channels = width
        for index, (count, ch) in enumerate(zip(layers, channels)):
            stride = 1 if index == 0 else 2
            blocks = [BasicBlock(in_channels, ch, stride)] + [BasicBlock(ch, ch) for _ in range(count - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
            in_channels = ch
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_channels, num_classes)
        self.num_features = in_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``(B, 3, H, W)`` -> dict ``layer4 (B, C, H/32, W/32)`` and ``pooled (B, C)`` (C = 8 width)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return {"layer4": x, "pooled": torch.flatten(self.avgpool(x), 1)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, classes)``."""
        return self.fc(self.forward_features(x)["pooled"])


def resnet34(**kwargs) -> ResNet:
    """ResNet34 (blocks 3, 4, 6, 3) with torchvision's layout."""
    return ResNet((3, 4, 6, 3), **kwargs)


# --------------------------------------------------------------------------- EfficientNet

def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor``, never dropping more than 10% (TF rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _conv_bn_act(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 activation: bool = True) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: keys ``0`` (conv, no bias), ``1`` (BN), ``2`` (SiLU)."""
    layers: List[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=(kernel_size - 1) // 2,
                  groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if activation:
        layers.append(nn.SiLU(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gating: ``x * sigmoid(fc2(silu(fc1(mean(x)))))``; keys ``fc1.*``, ``fc2.*``."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = nn.SiLU(inplace=True)
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * scale


class StochasticDepth(nn.Module):
    """Drop the residual branch per sample with probability ``p`` in training ("row" mode)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        keep.bernoulli_(survival)
        return x * keep / survival


class MBConv(nn.Module):
    """Inverted residual: [expand 1x1] -> depthwise kxk -> squeeze-excitation -> project 1x1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int,
                 stochastic_depth_prob: float) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and in_channels == out_channels
        expanded = _make_divisible(in_channels * expand_ratio)
        layers: List[nn.Module] = []
        if expanded != in_channels:
            layers.append(_conv_bn_act(in_channels, expanded, 1))
        layers.append(_conv_bn_act(expanded, expanded, kernel_size, stride=stride, groups=expanded))
        layers.append(SqueezeExcitation(expanded, max(1, in_channels // 4)))
        layers.append(_conv_bn_act(expanded, out_channels, 1, activation=False))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_res_connect:
            out = self.stochastic_depth(out) + x
        return out


# (expand ratio, kernel, stride, in channels, out channels, blocks) of EfficientNet-B0's 7 stages
_B0_STAGES: Tuple[Tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)


class EfficientNet(nn.Module):
    """EfficientNet (v1) with torchvision's layout: ``features.0`` stem, ``features.1..7`` MBConv
    stages, ``features.8`` 1x1 head conv, ``classifier.1`` linear.

    ``width_mult`` / ``depth_mult`` scale channels and block counts as in the paper
    (B0 = 1.0 / 1.0); values below 1 give tiny networks for quick tests.
    """

    def __init__(self, width_mult: float = 1.0, depth_mult: float = 1.0, num_classes: int = 1000,
                 dropout: float = 0.2, stochastic_depth_prob: float = 0.2) -> None:
        super().__init__()
        if width_mult <= 0 or depth_mult <= 0:
            raise ValueError(f"EfficientNet: width_mult and depth_mult must be > 0, got {width_mult}, {depth_mult}")
        stages = [(e, k, s, _make_divisible(cin * width_mult), _make_divisible(cout * width_mult),
                   int(math.ceil(n * depth_mult))) for e, k, s, cin, cout, n in _B0_STAGES]
        total_blocks = sum(stage[-1] for stage in stages)
        stem_channels = stages[0][3]
        modules: List[nn.Module] = [_conv_bn_act(3, stem_channels, 3, stride=2)]
        block_id = 0
        stride_so_far = 2
        self.stage_strides: List[int] = []
        self.stage_channels: List[int] = []
        for expand, kernel, stride, cin, cout, count in stages:
            blocks: List[nn.Module] = []
            for i in range(count):
                sd_prob = stochastic_depth_prob * float(block_id) / total_blocks
                blocks.append(MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand, sd_prob))
                block_id += 1
            modules.append(nn.Sequential(*blocks))
            stride_so_far *= stride
            self.stage_strides.append(stride_so_far)
            self.stage_channels.append(cout)
        last_in = stages[-1][4]
        self.num_features = 4 * last_in
        modules.append(_conv_bn_act(last_in, self.num_features, 1))
        self.features = nn.Sequential(*modules)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout, inplace=True), nn.Linear(self.num_features, num_classes))
        # efficientnet_pytorch's endpoint names: the last output at each stride, then the head.
        # stage index (1-based in ``features``) whose output is the last one at its stride:
        self.reduction_stages: Dict[str, int] = {}
        name_index = 1
        for idx in range(len(stages)):
            last_at_stride = idx == len(stages) - 1 or self.stage_strides[idx + 1] != self.stage_strides[idx]
            if last_at_stride:
                self.reduction_stages[f"reduction_{name_index}"] = idx + 1
                name_index += 1
        self.reduction_channels: Dict[str, int] = {
            name: self.stage_channels[stage - 1] for name, stage in self.reduction_stages.items()}
        self.reduction_strides: Dict[str, int] = {
            name: self.stage_strides[stage - 1] for name, stage in self.reduction_stages.items()}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def extract_endpoints(self, x: torch.Tensor, names: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        """``(B, 3, H, W)`` -> dict of feature maps.

        Keys: ``reduction_1`` .. ``reduction_5`` (B0: 16 ch at stride 2, 24 at 4, 40 at 8, 112 at
        16, 320 at 32), ``head`` ``(B, 1280, H/32, W/32)`` and ``pooled`` ``(B, 1280)``. With
        ``names``, the forward stops as soon as those are computed (``pooled`` needs the full net).
        """
        wanted = set(names) if names is not None else set(self.reduction_stages) | {"head", "pooled"}
        unknown = wanted - set(self.reduction_stages) - {"head", "pooled"}
        if unknown:
            raise ValueError(f"EfficientNet.extract_endpoints: unknown endpoint(s) {sorted(unknown)}")
        stage_to_name = {stage: name for name, stage in self.reduction_stages.items()}
        out: Dict[str, torch.Tensor] = {}
        last_stage = len(self.features) - 1
        for index, module in enumerate(self.features):
            x = module(x)
            name = stage_to_name.get(index)
            if name is not None and name in wanted:
                out[name] = x
            if index == last_stage:
                out["head"] = x
                out["pooled"] = torch.flatten(self.avgpool(x), 1)
            if wanted.issubset(out):
                break
        return {k: v for k, v in out.items() if k in wanted}

    def forward_features(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``(B, 3, H, W)`` -> dict ``pooled (B, 1280)`` (and ``head``)."""
        return self.extract_endpoints(x, ("head", "pooled"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, classes)``."""
        return self.classifier(self.forward_features(x)["pooled"])


def efficientnet_b0(width_mult: float = 1.0, depth_mult: float = 1.0, **kwargs) -> EfficientNet:
    """EfficientNet-B0 with torchvision's layout (multipliers other than 1 give a scaled variant)."""
    return EfficientNet(width_mult, depth_mult, **kwargs)


# --------------------------------------------------------------------------- builders, weights

def build_backbone(name: str, **kwargs) -> nn.Module:
    """``"googlenet"``, ``"resnet34"`` or ``"efficientnet_b0"`` (keyword arguments go to the class)."""
    builders = {"googlenet": googlenet, "resnet34": resnet34, "efficientnet_b0": efficientnet_b0,
                "efficientnet": efficientnet_b0}
    if name not in builders:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(builders)}")
    return builders[name](**kwargs)


def load_backbone_weights(model: nn.Module, path: str, strict: bool = True,
                          ignore_prefixes: Sequence[str] = ()) -> Tuple[List[str], List[str]]:
    """Load a torchvision-style state dict from ``path`` into ``model``.

    Accepts a plain state dict or a checkpoint dict holding one under ``state_dict`` / ``model``;
    a ``module.`` prefix (DataParallel) is removed. Keys starting with one of ``ignore_prefixes``
    (e.g. ``("fc.", "classifier.")`` to drop an ImageNet classifier) are skipped on both sides.
    With ``strict`` any missing or unexpected key or any shape mismatch raises ValueError naming
    the file and the first offending keys; otherwise mismatches are skipped.

    Returns ``(missing_keys, unexpected_keys)``.
    """
    if not os.path.isfile(path):
        raise ValueError(f"backbone weights file not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or non-torch file
        raise ValueError(f"cannot read backbone weights {path}: {exc}") from exc
    if isinstance(loaded, dict) and not any(isinstance(v, torch.Tensor) for v in loaded.values()):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(loaded).__name__}")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in loaded.items()}
    prefixes = tuple(ignore_prefixes)

    def keep(key: str) -> bool:
        return not (prefixes and key.startswith(prefixes))

    state = {k: v for k, v in state.items() if keep(k)}
    own = {k: v for k, v in model.state_dict().items() if keep(k)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape_bad = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if strict and (missing or unexpected or shape_bad):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {', '.join(missing[:5])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:5])})")
        if shape_bad:
            desc = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shape_bad[:5]]
            parts.append(f"{len(shape_bad)} with wrong shape (first: {', '.join(desc)})")
        raise ValueError(f"{path} does not match {type(model).__name__}: " + "; ".join(parts))
    usable = {k: v for k, v in state.items() if k in own and k not in shape_bad}
    model.load_state_dict(usable, strict=False)
    return missing, unexpected
