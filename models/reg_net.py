"""The post-regulariser: a small 3D U-Net over the implicit function's score volume (DESIGN §1, stage 3).

Input: the score volume of a patch of texels, ``volume [B, D, H, W]`` in (0, 1) (hypothesis d is a
displacement of ``d - (D - 1) / 2`` steps along the texel's normal) and ``mask [B, H, W]`` (texels
of the facial region). Output: logits ``[B, D, H, W]``; a softmax over D and a soft-argmax
(:func:`mvfr.regularisation.soft_argmax`) turn them into a displacement in steps.

Design (measured on synthetic faces, see the README):

- ``logits = temperature * score + unet([score, mask])``. The last U-Net layer starts at zero, so
  an untrained network already performs a sharpened soft-argmax of the implicit function's score
  (a sensible baseline); training learns the correction (neighbourhood consensus across texels,
  suppression of secondary peaks).
- No normalisation layers: the network is a pure function of a local neighbourhood, so a volume
  can be processed whole or in overlapping tiles with the same result away from tile borders, and
  training on random crops matches whole-volume inference.
- D, H and W are padded internally to a multiple of ``2 ** levels`` and cropped back.
- ``base_channels`` (``--reg_channels``) sets the width; the original release used 1.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.1, inplace=True))


class RegNet3D(nn.Module):
    """3D U-Net regulariser. ``volume [B, D, H, W]``, ``mask [B, H, W]`` -> logits ``[B, D, H, W]``."""

    def __init__(self, base_channels: int = 8, levels: int = 3, init_temperature: float = 10.0):
        super().__init__()
        if base_channels < 1 or levels < 1:
            raise ValueError(f"base_channels and levels must be >= 1, got {base_channels}, {levels}")
        self.base_channels = base_channels
        self.levels = levels
        ch = [base_channels * 2**k for k in range(levels + 1)]
        self.stem = nn.Sequential(_conv(2, ch[0]), _conv(ch[0], ch[0]))
        self.down = nn.ModuleList(nn.Sequential(_conv(ch[k], ch[k + 1], 2), _conv(ch[k + 1], ch[k + 1])) for k in range(levels))
        self.up = nn.ModuleList(
            nn.ConvTranspose3d(ch[k + 1], ch[k], 3, stride=2, padding=1, output_padding=1) for k in range(levels)
        )
        self.fuse = nn.ModuleList(_conv(ch[k], ch[k]) for k in range(levels))
        self.head = nn.Conv3d(ch[0], 1, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.log_temperature = nn.Parameter(torch.tensor(float(init_temperature)).log())

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def forward(self, volume: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if volume.dim() != 4 or mask.dim() != 3 or mask.shape != (volume.shape[0], *volume.shape[2:]):
            raise ValueError(f"expected volume [B, D, H, W] and mask [B, H, W], got {tuple(volume.shape)} and {tuple(mask.shape)}")
        B, D, H, W = volume.shape
        m = mask.to(volume.dtype)
        score = volume * m[:, None]
        x = torch.stack([score, m[:, None].expand_as(score)], 1)  # [B, 2, D, H, W]
        mult = 2**self.levels
        pad = [0, -W % mult, 0, -H % mult, 0, -D % mult]
        x = F.pad(x, pad).contiguous(memory_format=torch.channels_last_3d)  # oneDNN's fast 3D layout on CPU, same values
        feats = [self.stem(x)]
        for down in self.down:
            feats.append(down(feats[-1]))
        y = feats[-1]
        for k in reversed(range(self.levels)):
            y = self.fuse[k](self.up[k](y) + feats[k])
        residual = self.head(y)[:, 0, :D, :H, :W]
        return self.temperature * score + residual


def build_reg_net(options: dict | None = None) -> RegNet3D:
    """The regulariser described by a checkpoint's ``options`` (``reg_channels``, ``reg_levels``)."""
    options = options or {}
    return RegNet3D(base_channels=int(options.get("reg_channels", 8)), levels=int(options.get("reg_levels", 3)))
