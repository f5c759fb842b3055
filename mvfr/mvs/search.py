"""The search over the D hypotheses of every texel: exhaustive, or coarse to fine with propagation.

The search (:func:`coarse_to_fine_argmax`, :func:`full_search`) is written against a generic
``score_fn(texel_index [M], d_index [M]) -> scores [M]`` so it is tested against a synthetic score;
:func:`model_score_fn` makes one from the implicit function and :func:`search_face` runs a face.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch

from mvfr.mvs.geometry import FaceHypotheses, normalise_offset
from mvfr.mvs.sampling import ViewFeatures, sample_hypothesis_features


def texel_neighbours(setup: FaceHypotheses) -> torch.Tensor:
    """``[T, 8]`` indices (into ``setup.texels``) of each searched texel's 8 UV-grid neighbours, -1
    where the neighbour is not searched (on the setup's device)."""
    S = setup.size
    t = setup.texels.cpu().numpy()
    lookup = np.full(S * S, -1, np.int64)
    lookup[t] = np.arange(len(t))
    r, c = t // S, t % S
    out = []
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, 1), (-1, 1), (1, -1)):
        rr, cc = r + dr, c + dc
        inside = (rr >= 0) & (rr < S) & (cc >= 0) & (cc < S)
        out.append(np.where(inside, lookup[np.clip(rr, 0, S - 1) * S + np.clip(cc, 0, S - 1)], -1))
    return torch.as_tensor(np.stack(out, 1), device=setup.texels.device)


# -------------------------------------------------------------------------------------- search

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (texel_index [M], d_index [M]) -> [M]


def full_search(score_fn: ScoreFn, num_texels: int, d_size: int, device="cpu") -> torch.Tensor:
    """Evaluate every hypothesis: -> ``volume [T, D]`` float32."""
    t = torch.arange(num_texels, device=device).repeat_interleave(d_size)
    d = torch.arange(d_size, device=device).repeat(num_texels)
    return score_fn(t, d).float().reshape(num_texels, d_size)


def default_strides(d_size: int) -> tuple[int, ...]:
    """Search levels for ``d_size``: 12, 3, 1 for the paper's D = 201 (about 28 of 201 hypotheses
    before propagation); 8, 2, 1 for D <= 64; exhaustive for D <= 16."""
    if d_size <= 16:
        return (1,)
    if d_size <= 64:
        return (8, 2, 1)
    return (12, 3, 1)


def coarse_peaks(values: torch.Tensor, count: int) -> torch.Tensor:
    """Positions (columns) of the ``count`` highest local maxima of each row of ``values [T, N]``
    (NaN = unscored, never a peak) -> ``[T, count]`` int64, -1 where a row has fewer maxima."""
    v = torch.nan_to_num(values, nan=-float("inf"))
    pad = torch.full_like(v[:, :1], -float("inf"))
    left, right = torch.cat([pad, v[:, :-1]], 1), torch.cat([v[:, 1:], pad], 1)
    is_max = (v >= left) & (v >= right) & torch.isfinite(v)
    ranked = torch.where(is_max, v, torch.full_like(v, -float("inf")))
    top, pos = ranked.topk(min(count, v.shape[1]), dim=1)
    return torch.where(torch.isfinite(top), pos, torch.full_like(pos, -1))


def _score_candidates(score_fn: ScoreFn, vol: torch.Tensor, rows: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Score, once each, the candidates ``cand [R, C]`` (d indices; out-of-range ones are skipped) of
    texels ``rows [R]`` that ``vol [T, D]`` has not scored yet; writes them into ``vol`` and returns
    the texels that got a new score."""
    d_size = vol.shape[1]
    tt = rows[:, None].expand_as(cand)
    ok = (cand >= 0) & (cand < d_size)
    cand_c = cand.clamp(0, d_size - 1)
    ok &= torch.isnan(vol[tt, cand_c])
    key = torch.unique(tt[ok] * d_size + cand_c[ok])  # overlapping windows: each hypothesis once
    t_sel, d_sel = key // d_size, key % d_size
    if t_sel.numel():
        vol[t_sel, d_sel] = score_fn(t_sel, d_sel).float()
    return torch.unique(t_sel)


def coarse_to_fine_argmax(
    score_fn: ScoreFn,
    num_texels: int,
    d_size: int,
    strides: Sequence[int] | None = None,
    device="cpu",
    peaks: int = 1,
    neighbours: torch.Tensor | None = None,
    rounds: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse-to-fine search over d for every texel.

    Level 0 scores every ``strides[0]``-th hypothesis (and the last one). Level 1 scores every
    ``strides[1]``-th hypothesis strictly inside ``(p - strides[0], p + strides[0])`` around each of
    the texel's ``peaks`` highest coarse local maxima ``p`` (more than one guards against a
    multi-modal score whose best coarse sample sits on the wrong mode); each later level scores
    every ``strides[k]``-th hypothesis strictly inside ``(peak - strides[k-1], peak + strides[k-1])``
    around the texel's current best. For a score that is unimodal in d this finds the exact argmax
    (the true peak lies strictly between the coarse peak's neighbours). ``strides`` must decrease
    and end with 1.

    Then ``rounds`` rounds of propagation (as in PatchMatch stereo): with ``neighbours [T, K]``
    (indices of each texel's neighbours on the surface, -1 for none) every texel also scores the
    hypotheses within +-1 of each neighbour's current best. The surface is continuous, so a mode a
    texel's own coarse pass missed is usually found through a neighbour that did not miss it.

    Returns ``argmax [T]`` int64 and ``volume [T, D]`` float32 with NaN where nothing was scored.
    """
    strides = tuple(int(s) for s in (strides or default_strides(d_size)))
    if strides[-1] != 1 or any(a <= b for a, b in zip(strides[:-1], strides[1:])) or strides[0] < 1:
        raise ValueError(f"strides must be strictly decreasing and end with 1, got {strides}")
    if peaks < 1:
        raise ValueError(f"peaks must be >= 1, got {peaks}")
    vol = torch.full((num_texels, d_size), float("nan"), device=device)
    coarse = torch.unique(torch.cat([torch.arange(0, d_size, strides[0]), torch.tensor([d_size - 1])])).to(device)
    t = torch.arange(num_texels, device=device).repeat_interleave(len(coarse))
    d = coarse.repeat(num_texels)
    vol[t, d] = score_fn(t, d).float()
    for level, (prev, s) in enumerate(zip(strides[:-1], strides[1:])):
        if level == 0 and peaks > 1:
            pos = coarse_peaks(vol[:, coarse], peaks)  # [T, P] columns of the coarse grid
            centre = torch.where(pos >= 0, coarse[pos.clamp(min=0)], torch.full_like(pos, -(10 * d_size)))
        else:
            centre = torch.nan_to_num(vol, nan=-float("inf")).argmax(1)[:, None]  # [T, 1]
        j = torch.arange(-((prev - 1) // s), (prev - 1) // s + 1, device=device) * s
        j = j[j != 0]
        cand = (centre[:, :, None] + j[None, None, :]).reshape(num_texels, -1)  # [T, P * J]
        _score_candidates(score_fn, vol, torch.arange(num_texels, device=device), cand)
    if rounds > 0 and neighbours is None:
        raise ValueError("propagation rounds need the neighbours table")
    if rounds > 0:
        nb = neighbours.to(device)
        has = nb >= 0
        best = torch.nan_to_num(vol, nan=-float("inf")).argmax(1)
        changed = torch.ones(num_texels, dtype=torch.bool, device=device)
        for _ in range(rounds):
            # only texels with a neighbour whose best moved in the last round can gain a candidate
            active = torch.nonzero((changed[nb.clamp(min=0)] & has).any(1)).squeeze(1)
            if not active.numel():
                break
            nba = nb[active]
            centre = torch.where(nba >= 0, best[nba.clamp(min=0)], torch.full_like(nba, -(10 * d_size)))  # [A, K]
            cand = (centre[:, :, None] + torch.arange(-1, 2, device=device)).reshape(len(active), -1)
            rows = _score_candidates(score_fn, vol, active, cand)
            changed = torch.zeros_like(changed)
            if not rows.numel():
                break
            new_best = torch.nan_to_num(vol[rows], nan=-float("inf")).argmax(1)
            changed[rows] = new_best != best[rows]
            best[rows] = new_best
    argmax = torch.nan_to_num(vol, nan=-float("inf")).argmax(1)
    return argmax, vol


def fill_unscored(volume: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Linear interpolation along d of the NaN entries of ``volume [T, D]`` between scored neighbours
    (constant beyond the first/last scored one; 0 for a row with no score). Rows go ``chunk`` at a
    time (the temporaries stay in cache)."""
    T, D = volume.shape
    out = torch.empty_like(volume)
    idx_row = torch.arange(D, device=volume.device, dtype=torch.int32)
    big = D + 1
    for s in range(0, T, chunk):
        vol = volume[s : s + chunk]
        known = ~torch.isnan(vol)
        idx = idx_row.expand_as(vol)
        prev = torch.where(known, idx, -1).cummax(1).values
        nxt = torch.where(known, idx, big).flip(1).cummin(1).values.flip(1)
        v = torch.nan_to_num(vol, nan=0.0)
        has_prev, has_next = prev >= 0, nxt < big
        vp = torch.gather(v, 1, prev.clamp(min=0).long())
        vn = torch.gather(v, 1, nxt.clamp(max=D - 1).long())
        w = (idx - prev).float() / (nxt - prev).clamp(min=1).float()
        filled = torch.where(has_prev & has_next, vp + w * (vn - vp), torch.where(has_prev, vp, torch.where(has_next, vn, torch.zeros_like(v))))
        out[s : s + chunk] = torch.where(known, vol, filled)
    return out


# -------------------------------------------------------------------------------- search glue


def model_score_fn(model, features: "ViewFeatures", setup: FaceHypotheses, chunk: int, timings: dict | None = None) -> ScoreFn:
    """A :data:`ScoreFn` over hypothesis indices that runs the model in chunks of ``chunk`` points
    (memory stays bounded). Returns float32 scores on the features' device. ``timings``, when given,
    accumulates seconds under ``"sampling"`` (projection + gather) and ``"mlp"`` (aggregation + MLP)
    and the number of scored points under ``"points"``."""

    half = setup.half_range

    def fn(texel_index: torch.Tensor, d_index: torch.Tensor) -> torch.Tensor:
        out = torch.empty(texel_index.numel(), dtype=torch.float32, device=features.device)
        for s in range(0, texel_index.numel(), chunk):
            t = texel_index[s : s + chunk]
            steps = d_index[s : s + chunk].to(torch.float32) - half
            t0 = time.perf_counter()
            samples, vis = sample_hypothesis_features(features, setup, t, steps)
            t1 = time.perf_counter()
            out[s : s + chunk] = model.score_samples(samples, vis, normalise_offset(steps, setup.d_size))[0]
            if timings is not None:
                if features.device.type == "cuda":
                    torch.cuda.synchronize()
                t2 = time.perf_counter()
                timings["sampling"] = timings.get("sampling", 0.0) + (t1 - t0)
                timings["mlp"] = timings.get("mlp", 0.0) + (t2 - t1)
                timings["points"] = timings.get("points", 0) + int(t.numel())
        return out

    return fn


def search_face(
    model,
    features: "ViewFeatures",
    setup: FaceHypotheses,
    mode: str = "c2f",
    chunk: int = 65536,
    strides: Sequence[int] | None = None,
    timings: dict | None = None,
    peaks: int = 1,
    rounds: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the search of one face -> ``argmax [T]`` int64 and ``volume [T, D]`` float32 (every entry
    filled: unscored ones interpolated from scored neighbours along d). ``mode`` is ``c2f`` or ``full``."""
    fn = model_score_fn(model, features, setup, chunk, timings)
    dev = features.device
    if mode == "full":
        vol = full_search(fn, setup.num_texels, setup.d_size, device=dev)
        return vol.argmax(1), vol
    if mode != "c2f":
        raise ValueError(f"search mode must be 'c2f' or 'full', got {mode!r}")
    neighbours = texel_neighbours(setup) if rounds > 0 else None
    argmax, vol = coarse_to_fine_argmax(fn, setup.num_texels, setup.d_size, strides, dev, peaks, neighbours, rounds)
    return argmax, fill_unscored(vol)
