"""Cross-view statistics of sampled features: masked mean, variance and the visible-view count.

Only views that see a hypothesis count in the masked mean and variance (:func:`aggregate_views`);
a hypothesis with fewer than :data:`MIN_VIEWS` visible views has no score (it is 0 in the volume and
never contributes to a loss).
"""

from __future__ import annotations

import torch

MIN_VIEWS = 2  # a hypothesis needs at least this many visible views to be scored


# -------------------------------------------------------------------------------- aggregation


def aggregate_views(samples: torch.Tensor, vis: torch.Tensor, min_views: int = MIN_VIEWS, zeroed: bool = False):
    """Masked per-channel mean and variance over views.

    ``samples [V, M, C]`` features, ``vis [V, M]`` bool -> ``mean [M, C]``, ``var [M, C]`` (population
    variance over the visible views; 0 where fewer than ``min_views``), ``ok [M]`` bool (at least
    ``min_views`` visible views). ``zeroed=True`` promises that ``samples`` is already 0 where not
    visible (what :func:`sample_views` returns), which skips one masking pass.
    """
    if samples.ndim != 3 or vis.shape != samples.shape[:2]:
        raise ValueError(f"samples must be [V, M, C] and vis [V, M]; got {tuple(samples.shape)} and {tuple(vis.shape)}")
    acc = torch.float64 if samples.dtype == torch.float64 else torch.float32
    x = samples.to(acc)
    if not zeroed:
        x = x * vis.to(acc)[..., None]
    count = vis.sum(0).to(acc)  # [M]
    ok = count >= min_views
    inv = (ok.to(acc) / count.clamp(min=1.0))[:, None]
    mean = x.sum(0) * inv
    var = ((x * x).sum(0) * inv - mean * mean).clamp_(min=0.0)  # never in place: the caller's samples stay as they were
    return mean, var, ok


def view_count_feature(vis: torch.Tensor, min_views: int = MIN_VIEWS) -> torch.Tensor:
    """``vis [V, M]`` -> ``[M]`` float32 ``min_views / count`` (1 with the fewest views, towards 0 with
    many; 0 where fewer than ``min_views``): tells the MLP how much a variance of this many views means."""
    count = vis.sum(0).to(torch.float32)
    return torch.where(count >= min_views, min_views / count.clamp(min=1.0), torch.zeros_like(count))
