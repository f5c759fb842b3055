"""The implicit function: per-view features -> cross-view statistics + offset -> matching score.

For a hypothesis seen by V' >= 2 views, the features sampled there give a per-channel variance
(and mean) over the visible views; with the normalised offset they go through an MLP (leaky ReLU,
sigmoid output) that regresses the matching score in (0, 1).

Aggregation follows ``mlp_dim[0]``: ``C + 1`` = variance and offset (the paper's 129 with 128
channels), ``2 C + 1`` = mean, variance and offset, ``2 C + 2`` = mean, variance, the number of
visible views (as ``2 / count``) and offset. The view count matters when a face is seen by few
views: the variance of two samples is a far noisier statistic than that of ten, and only the
count lets one MLP weigh it accordingly.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from models.feature_net import FeatureNet
from mvfr.mvs.aggregation import aggregate_views, view_count_feature
from mvfr.mvs.geometry import FaceHypotheses, normalise_offset
from mvfr.mvs.sampling import ViewFeatures, sample_hypothesis_features


class ImplicitFunction(nn.Module):
    """Feature extractor + MLP.

    ``feature_channels`` C; ``mlp_dim`` widths from input to output (first = C + 1 or 2 C + 1,
    last = 1).
    """

    def __init__(self, feature_channels: int = 128, mlp_dim: Sequence[int] = (129, 1024, 512, 256, 128, 1)):
        super().__init__()
        mlp_dim = [int(x) for x in mlp_dim]
        C = int(feature_channels)
        if len(mlp_dim) < 2 or mlp_dim[-1] != 1:
            raise ValueError(f"mlp_dim must have at least 2 widths and end with 1, got {mlp_dim}")
        modes = {C + 1: (False, False), 2 * C + 1: (True, False), 2 * C + 2: (True, True)}
        if mlp_dim[0] not in modes:
            raise ValueError(
                f"mlp_dim[0] = {mlp_dim[0]} must be feature_channels + 1 = {C + 1} (variance), "
                f"2 * feature_channels + 1 = {2 * C + 1} (mean and variance) or 2 * feature_channels + 2 = "
                f"{2 * C + 2} (mean, variance and view count)"
            )
        self.use_mean, self.use_count = modes[mlp_dim[0]]
        self.feature_channels = C
        self.mlp_dim = mlp_dim
        self.feature_net = FeatureNet(C)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(mlp_dim[:-1], mlp_dim[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(mlp_dim) - 2:
                layers.append(nn.LeakyReLU(0.2, inplace=True))
        self.mlp = nn.Sequential(*layers)

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """``images [V, 3, H, W]`` in [0, 1] -> ``features [V, C, H/2, W/2]``."""
        return self.feature_net(images)

    def view_features(self, images: torch.Tensor, dtype: torch.dtype | None = None) -> ViewFeatures:
        """Features of every view, channels-last for sampling. ``dtype`` bfloat16 (low-precision
        inference) runs the CNN under bfloat16 autocast on channels-last tensors, which oneDNN maps
        to AMX/AVX512-BF16 kernels (3x faster than float32 on a Sapphire Rapids core; in NCHW
        layout bfloat16 is no faster); the channels-last output then becomes the sampling table
        without a copy."""
        if dtype != torch.bfloat16:
            return ViewFeatures(self.extract(images), dtype, stride=self.feature_net.stride)
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            maps = self.extract(images)
        return ViewFeatures(maps, dtype, stride=self.feature_net.stride)

    def score_samples(self, samples: torch.Tensor, vis: torch.Tensor, d_norm: torch.Tensor):
        """``samples [V, M, C]`` sampled features (0 where not visible), ``vis [V, M]`` bool,
        ``d_norm [M]`` in [-1, 1] -> ``score [M]`` float32 in (0, 1) (0 where fewer than 2 views),
        ``ok [M]`` bool. bfloat16 samples run the MLP under bfloat16 autocast."""
        mean, var, ok = aggregate_views(samples, vis, zeroed=True)
        parts = [mean, var] if self.use_mean else [var]
        if self.use_count:
            parts.append(view_count_feature(vis).to(var.dtype)[:, None])
        x = torch.cat(parts + [d_norm.to(var.dtype)[:, None]], 1)
        low = samples.dtype == torch.bfloat16
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=low):
            logit = self.mlp(x)[:, 0]
        score = torch.sigmoid(logit.float())
        return score * ok.to(score.dtype), ok

    def score_hypotheses(
        self,
        features: ViewFeatures,
        setup: FaceHypotheses,
        texel_index: torch.Tensor,
        steps: torch.Tensor,
        offset_jitter: torch.Tensor | None = None,
    ):
        """Score hypotheses of one face: ``texel_index [M]``, ``steps [M]`` (signed offsets in steps)
        -> ``score [M]``, ``ok [M]``. ``offset_jitter [M]`` (steps, training only) is added to the
        offset the MLP is given, not to where the hypothesis is sampled."""
        samples, vis = sample_hypothesis_features(features, setup, texel_index, steps)
        d_in = steps.float() if offset_jitter is None else steps.float() + offset_jitter
        return self.score_samples(samples, vis, normalise_offset(d_in, setup.d_size))

    def forward(
        self,
        images: torch.Tensor,
        setup: FaceHypotheses,
        texel_index: torch.Tensor,
        steps: torch.Tensor,
        offset_jitter: torch.Tensor | None = None,
    ):
        """Training path: ``images [V, 3, H, W]`` -> ``score [M]``, ``ok [M]``."""
        return self.score_hypotheses(self.view_features(images), setup, texel_index, steps, offset_jitter)


def init_from(model: ImplicitFunction, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Warm start ``model`` from another implicit function's weights ``state`` whose MLP input may be
    narrower (e.g. a variance-only checkpoint into a mean-variance-count model): every tensor of the
    same shape is copied; the first MLP layer's columns are matched by meaning (variance columns to
    variance columns, the offset column to the offset column) and new input columns start at zero, so
    the warm-started model scores exactly as the old one did. Returns the names that were not copied."""
    own = model.state_dict()
    C = model.feature_channels
    skipped = []
    first = "mlp.0.weight"
    for name, value in state.items():
        if name not in own:
            skipped.append(name)
        elif own[name].shape == value.shape:
            own[name] = value.clone()
        elif name == first and value.shape[0] == own[name].shape[0]:
            w = torch.zeros_like(own[name])
            old_in = value.shape[1]
            old_mean = old_in == 2 * C + 1 or old_in == 2 * C + 2
            if old_mean and model.use_mean:
                w[:, : 2 * C] = value[:, : 2 * C]
            else:  # the old variance block is its first C (no mean) or second C columns (mean)
                src = value[:, C : 2 * C] if old_mean else value[:, :C]
                w[:, (C if model.use_mean else 0) : (2 * C if model.use_mean else C)] = src
            w[:, -1] = value[:, -1]  # the offset is the last input in every mode
            own[name] = w
        else:
            skipped.append(name)
    model.load_state_dict(own)
    return skipped


def build_implicit_function(options: Mapping[str, Any]) -> ImplicitFunction:
    """The model described by an options dict (``feature_channels``, ``mlp_dim``), e.g. a checkpoint's."""
    return ImplicitFunction(int(options.get("feature_channels", 128)), list(options.get("mlp_dim", (129, 1024, 512, 256, 128, 1))))
