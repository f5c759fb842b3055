"""Per-view CNN feature extractor of the implicit function (paper: Xiao et al. 2022, Fig. 2).

A stride-2 5x5 convolution, then 3x3 convolutions with GroupNorm and ReLU (32 -> 64 channels) and a
3x3 output convolution to ``out_channels`` (default 128) at half the image resolution.

Sampling convention: the stride-2 5x5 layer has padding 2, so output sample ``i`` is centred on
input pixel ``2 i`` (the later layers are stride 1, "same" padding), i.e. :attr:`FeatureNet.stride`
= 2 and pixel ``x`` of the input is feature coordinate ``x / 2``; :class:`mvfr.mvs.sampling.ViewFeatures`
and :func:`mvfr.mvs.sampling.sample_views` sample with that rule.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_gn_relu(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.GroupNorm(groups, cout),
        nn.ReLU(inplace=True),
    )


class FeatureNet(nn.Module):
    """``images [V, 3, H, W]`` float in [0, 1] -> ``features [V, out_channels, ceil(H/2), ceil(W/2)]``.

    ``widths`` are the channels of the hidden layers (the first is the stride-2 5x5 layer).
    """

    stride = 2  # output sample i is centred on input pixel stride * i
    MEAN = (0.5, 0.5, 0.5)
    STD = (0.25, 0.25, 0.25)

    def __init__(self, out_channels: int = 128, widths: tuple[int, ...] = (32, 32, 64, 64)):
        super().__init__()
        if out_channels < 1 or not widths:
            raise ValueError(f"FeatureNet needs out_channels >= 1 and at least one hidden width, got {out_channels}, {widths}")
        self.out_channels = int(out_channels)
        layers = [_conv_gn_relu(3, widths[0], 5, stride=self.stride)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers.append(_conv_gn_relu(cin, cout, 3))
        layers.append(nn.Conv2d(widths[-1], out_channels, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"FeatureNet expects images [V, 3, H, W], got {tuple(images.shape)}")
        return self.body((images - self.mean) / self.std)
