"""Networks of the mesoscopic stage: a pix2pixHD global generator and a PatchGAN discriminator.

:class:`GlobalGenerator` follows pix2pixHD (Wang et al. 2018): a 7x7 reflection-padded stem, ``n_downsample``
stride-2 3x3 convolutions doubling the channels, ``n_blocks`` residual blocks, as many transposed
convolutions back up and a 7x7 head, instance normalisation throughout. The original release runs the
paper's full-size generator (ngf 64, 4 downsamplings, 9 blocks, 182M parameters with its local
enhancers); our default (ngf 16, 3 downsamplings, 6 blocks, about 1.8M parameters, 7 MB) trains on a
CPU in well under an hour on the synthetic set, and ``--dp_ngf/--dp_n_downsample/--dp_n_blocks``
scale it up on a GPU.

:class:`DisplacementNet` wraps the generator with the stage's input/output conventions: input
``texture [B, 3, H, W]`` in [-1, 1] (plus, optionally, 2 uv channels), output displacement in mm
``[B, 1, H, W]`` = ``max_mm * tanh(raw)``; ``max_mm`` is a registered buffer saved in the checkpoint.
The network is fully convolutional: H and W need only be multiples of ``2 ** n_downsample``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """x + conv(relu(conv(x))), reflection padding and instance norm (pix2pixHD)."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class GlobalGenerator(nn.Module):
    """pix2pixHD global generator: ``[B, input_nc, H, W] -> [B, output_nc, H, W]`` (no output activation)."""

    def __init__(self, input_nc: int = 3, output_nc: int = 1, ngf: int = 16, n_downsample: int = 3, n_blocks: int = 6):
        super().__init__()
        if min(input_nc, output_nc, ngf) < 1 or n_downsample < 0 or n_blocks < 0:
            raise ValueError(f"invalid generator size: input_nc={input_nc} output_nc={output_nc} ngf={ngf} "
                             f"n_downsample={n_downsample} n_blocks={n_blocks}")
        self.n_downsample = n_downsample
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7), _norm(ngf), nn.ReLU(True)]
        ch = ngf
        for _ in range(n_downsample):
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), _norm(ch * 2), nn.ReLU(True)]
            ch *= 2
        layers += [ResnetBlock(ch) for _ in range(n_blocks)]
        for _ in range(n_downsample):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1), _norm(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, output_nc, 7)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = 2**self.n_downsample
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(f"input height and width must be multiples of {m} (2 ** n_downsample), got {tuple(x.shape[-2:])}")
        return self.model(x)


class DisplacementNet(nn.Module):
    """UV texture -> mesoscopic displacement in mm.

    ``forward(texture [B, 3, H, W] in [-1, 1], uv [B, 2, H, W] or None) -> dp_mm [B, 1, H, W]``.
    With ``use_uv`` the texel's template uv (in [-1, 1]) is appended to the input, so the network may
    learn where on the face wrinkles sit.
    """

    def __init__(self, ngf: int = 16, n_downsample: int = 3, n_blocks: int = 6, max_mm: float = 1.0, use_uv: bool = False):
        super().__init__()
        self.use_uv = bool(use_uv)
        self.generator = GlobalGenerator(3 + 2 * self.use_uv, 1, ngf, n_downsample, n_blocks)
        self.register_buffer("max_mm", torch.tensor(float(max_mm)))
        self.config = {"ngf": ngf, "n_downsample": n_downsample, "n_blocks": n_blocks, "max_mm": float(max_mm), "use_uv": self.use_uv}

    @property
    def multiple(self) -> int:
        return 2**self.generator.n_downsample

    def forward(self, texture: torch.Tensor, uv: torch.Tensor | None = None) -> torch.Tensor:
        if texture.ndim != 4 or texture.shape[1] != 3:
            raise ValueError(f"texture must be [B, 3, H, W], got {tuple(texture.shape)}")
        x = texture
        if self.use_uv:
            if uv is None:
                raise ValueError("this network was built with use_uv=True; pass uv [B, 2, H, W]")
            x = torch.cat([texture, uv.to(texture)], dim=1)
        return self.max_mm * torch.tanh(self.generator(x))


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix, n_layers stride-2 convs): ``[B, C, H, W] -> [B, 1, h, w]`` logits per patch."""

    def __init__(self, input_nc: int = 4, ndf: int = 32, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        ch = ndf
        for k in range(1, n_layers + 1):
            nxt = ndf * min(2**k, 8)
            layers += [nn.Conv2d(ch, nxt, 4, stride=2 if k < n_layers else 1, padding=1), _norm(nxt), nn.LeakyReLU(0.2, True)]
            ch = nxt
        layers += [nn.Conv2d(ch, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def uv_grid(height: int, width: int, top: int = 0, left: int = 0, size: int | None = None, device=None) -> torch.Tensor:
    """Template uv of a crop, mapped to [-1, 1]: ``[2, height, width]``.

    The crop starts at texel (``top``, ``left``) of a ``size`` x ``size`` map (default: the crop is the
    whole map); texel (i, j) has uv = ((j + 0.5) / S, 1 - (i + 0.5) / S) (DESIGN §3).
    """
    size = size or max(height, width)
    j = (torch.arange(width, device=device, dtype=torch.float32) + left + 0.5) / size
    i = 1.0 - (torch.arange(height, device=device, dtype=torch.float32) + top + 0.5) / size
    u = j.view(1, -1).expand(height, width)
    v = i.view(-1, 1).expand(height, width)
    return torch.stack([u, v]) * 2.0 - 1.0


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad ``x [B, C, H, W]`` at the bottom/right to multiples of ``multiple``; returns (padded, (H, W))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)
