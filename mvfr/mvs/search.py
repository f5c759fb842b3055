"""The search over the D hypotheses of every texel: exhaustive, or coarse to fine with propagation.

The search (:func:`coarse_to_fine_argmax`, :func:`full_search`) is written against a generic
``score_fn(texel_index [M], d_index [M]) -> scores [M]`` so it is tested against a synthetic score;
:func:`model_score_fn` makes one from the implicit function and :func:`search_face` runs a face.
"""

from __future__ import annotations

import dataclasses
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
    """Search levels for ``d_size``: 24, 6, 2, 1 for the paper's D = 201 (21 of 201 hypotheses per
    lattice texel before propagation; the learnt score's peak is wide enough that a 24-step grid
    lands on its flank); 8, 2, 1 for D <= 64; exhaustive for D <= 16."""
    if d_size <= 16:
        return (1,)
    if d_size <= 64:
        return (8, 2, 1)
    return (24, 6, 2, 1)


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


def uv_lattice(setup: FaceHypotheses, neighbours: torch.Tensor, spacing: int) -> torch.Tensor:
    """``[T] bool``: the searched texels on every ``spacing``-th row and column of the UV grid, plus every
    texel none of whose 8 neighbours (``neighbours [T, 8]``, :func:`texel_neighbours`) is on it, so that
    each texel off the lattice borders one on it. ``spacing`` 1: every texel."""
    if spacing < 1:
        raise ValueError(f"lattice spacing must be >= 1, got {spacing}")
    t = setup.texels.to(neighbours.device)
    on = ((t // setup.size) % spacing == 0) & ((t % setup.size) % spacing == 0)
    bordered = torch.where(neighbours >= 0, on[neighbours.clamp(min=0)], torch.zeros_like(on[neighbours.clamp(min=0)])).any(1)
    return on | ~bordered


def _best(vol: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(vol, nan=-float("inf")).argmax(1)


def _around(centre: torch.Tensor, radius: int) -> torch.Tensor:
    """Candidates ``centre [R, K]`` +- ``radius`` -> ``[R, K * (2 radius + 1)]`` (no centre: -10 D, out of range)."""
    return (centre[:, :, None] + torch.arange(-radius, radius + 1, device=centre.device)).reshape(len(centre), -1)


def _neighbour_best(best: torch.Tensor, nb: torch.Tensor, use: torch.Tensor, d_size: int) -> torch.Tensor:
    """``best [T]`` of the neighbours ``nb [R, K]`` where ``use [R, K]``, else an out-of-range index."""
    return torch.where(use, best[nb.clamp(min=0)], torch.full_like(nb, -(10 * d_size)))


def coarse_to_fine_argmax(
    score_fn: ScoreFn,
    num_texels: int,
    d_size: int,
    strides: Sequence[int] | None = None,
    device="cpu",
    peaks: int = 1,
    neighbours: torch.Tensor | None = None,
    rounds: int = 0,
    lattice: torch.Tensor | None = None,
    window: int = 2,
    radius: int = 1,
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

    ``lattice [T] bool`` (default: every texel; :func:`uv_lattice`) restricts these levels to a
    sub-lattice of the UV grid. Every other texel starts from its lattice neighbours instead (the
    surface is continuous): it scores the hypotheses within +-``window`` of each lattice neighbour's
    best, then +-1 around its own best. With a lattice of spacing 2 this is a quarter of the coarse work.

    Then ``rounds`` rounds of propagation (as in PatchMatch stereo): with ``neighbours [T, K]``
    (indices of each texel's neighbours on the surface, -1 for none) every texel also scores the
    hypotheses within +-``radius`` of each neighbour's current best; only texels with a neighbour
    whose best moved in the last round take part. A mode a texel's own pass missed is usually
    found through a neighbour that did not miss it.

    Returns ``argmax [T]`` int64 and ``volume [T, D]`` float32 with NaN where nothing was scored.
    """
    strides = tuple(int(s) for s in (strides or default_strides(d_size)))
    if strides[-1] != 1 or any(a <= b for a, b in zip(strides[:-1], strides[1:])) or strides[0] < 1:
        raise ValueError(f"strides must be strictly decreasing and end with 1, got {strides}")
    if peaks < 1:
        raise ValueError(f"peaks must be >= 1, got {peaks}")
    sparse = lattice is not None and not bool(lattice.all())
    if (rounds > 0 or sparse) and neighbours is None:
        raise ValueError("propagation rounds and a lattice need the neighbours table")
    nb = neighbours.to(device) if neighbours is not None else None
    vol = torch.full((num_texels, d_size), float("nan"), device=device)
    rows = torch.nonzero(lattice.to(device)).squeeze(1) if sparse else torch.arange(num_texels, device=device)
    _search_levels(score_fn, vol, rows, strides, peaks)
    if sparse:
        _start_from_lattice(score_fn, vol, lattice.to(device), nb, window)
    if rounds > 0:
        _propagate(score_fn, vol, nb, rounds, radius)
    return _best(vol), vol


def _search_levels(score_fn: ScoreFn, vol: torch.Tensor, rows: torch.Tensor, strides: tuple[int, ...], peaks: int) -> None:
    """The coarse-to-fine levels of :func:`coarse_to_fine_argmax` on the texels ``rows``, scored into ``vol [T, D]``."""
    d_size, device = vol.shape[1], vol.device
    coarse = torch.unique(torch.cat([torch.arange(0, d_size, strides[0]), torch.tensor([d_size - 1])])).to(device)
    t = rows.repeat_interleave(len(coarse))
    d = coarse.repeat(len(rows))
    vol[t, d] = score_fn(t, d).float()
    for level, (prev, s) in enumerate(zip(strides[:-1], strides[1:])):
        if level == 0 and peaks > 1:
            pos = coarse_peaks(vol[rows][:, coarse], peaks)  # [R, P] columns of the coarse grid
            centre = torch.where(pos >= 0, coarse[pos.clamp(min=0)], torch.full_like(pos, -(10 * d_size)))
        else:
            centre = _best(vol[rows])[:, None]  # [R, 1]
        j = torch.arange(-((prev - 1) // s), (prev - 1) // s + 1, device=device) * s
        j = j[j != 0]
        cand = (centre[:, :, None] + j[None, None, :]).reshape(len(rows), -1)  # [R, P * J]
        _score_candidates(score_fn, vol, rows, cand)


def _start_from_lattice(score_fn: ScoreFn, vol: torch.Tensor, on: torch.Tensor, nb: torch.Tensor, window: int) -> None:
    """Texels off the lattice (``on [T] bool`` False) score +-``window`` around each lattice neighbour's best,
    then +-1 around their own best."""
    off = torch.nonzero(~on).squeeze(1)
    nbo = nb[off]
    best = _best(vol)
    _score_candidates(score_fn, vol, off, _around(_neighbour_best(best, nbo, (nbo >= 0) & on[nbo.clamp(min=0)], vol.shape[1]), window))
    _score_candidates(score_fn, vol, off, _around(_best(vol[off])[:, None], 1))


def _propagate(score_fn: ScoreFn, vol: torch.Tensor, nb: torch.Tensor, rounds: int, radius: int) -> None:
    """``rounds`` rounds of propagation: a texel with a neighbour whose best moved in the last round scores
    +-``radius`` around each neighbour's best."""
    has = nb >= 0
    best = _best(vol)
    changed = torch.ones(vol.shape[0], dtype=torch.bool, device=vol.device)
    for _ in range(rounds):
        active = torch.nonzero((changed[nb.clamp(min=0)] & has).any(1)).squeeze(1)
        if not active.numel():
            break
        nba = nb[active]
        scored = _score_candidates(score_fn, vol, active, _around(_neighbour_best(best, nba, nba >= 0, vol.shape[1]), radius))
        changed = torch.zeros_like(changed)
        if not scored.numel():
            break
        new_best = _best(vol[scored])
        changed[scored] = new_best != best[scored]
        best[scored] = new_best


def fill_unscored(
    volume: torch.Tensor, chunk: int = 2048, lattice: torch.Tensor | None = None, neighbours: torch.Tensor | None = None
) -> torch.Tensor:
    """Fill the NaN (unscored) entries of ``volume [T, D]``; the argmax of every row stays its best scored entry.

    A texel searched coarse to fine (every texel, or those of ``lattice [T] bool``) is interpolated
    linearly along d between its scored hypotheses (constant beyond the first/last scored one; 0 for
    a row with no score). A texel off the lattice was scored only near its peak
    (:func:`coarse_to_fine_argmax`): its unscored entries come from its lattice neighbours
    (``neighbours [T, K]``) instead, each neighbour's filled row shifted along d so that its best
    sits on the texel's best, averaged, and scaled so that its maximum is the texel's best score
    (so away from the peak the profile is the neighbours' shape, and nothing borrowed outscores
    what the texel scored itself). Rows go ``chunk`` at a time (the temporaries stay in cache)."""
    if lattice is None or bool(lattice.all()):
        return _fill_linear(volume, chunk)
    on = lattice.to(volume.device)
    out = volume.clone()
    out[on] = _fill_linear(volume[on], chunk)
    off = torch.nonzero(~on).squeeze(1)
    nb = neighbours.to(volume.device)
    T, D = volume.shape
    d = torch.arange(D, device=volume.device)
    best = _best(out)  # lattice rows: of the filled row; the others: of what they scored
    # an off-lattice texel has at most 4 lattice neighbours among its 8 (spacing >= 2): keep those
    use_all = (nb >= 0) & on[nb.clamp(min=0)]
    keep = min(4, nb.shape[1])
    order = torch.sort(use_all.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :keep]
    nb_lat = torch.where(torch.gather(use_all, 1, order), torch.gather(nb, 1, order), torch.full_like(order, -1))
    for s in range(0, len(off), chunk):
        rows = off[s : s + chunk]
        own = out[rows]  # [R, D]
        own_best = best[rows]
        own_max = torch.nan_to_num(own, nan=-float("inf")).amax(1)
        n = nb_lat[rows].clamp(min=0)
        use = nb_lat[rows] >= 0  # [R, K]
        shift = own_best[:, None] - best[n]  # [R, K]
        idx = (d[None, None, :] - shift[..., None]).clamp(0, D - 1)  # [R, K, D]
        moved = torch.gather(out[n], 2, idx)
        moved = torch.where(use[..., None], moved, torch.zeros((), dtype=volume.dtype, device=volume.device))
        borrowed = moved.sum(1) / use.sum(1).clamp(min=1).to(volume.dtype)[:, None]
        peak = borrowed.amax(1, keepdim=True)
        scale = torch.where(peak > 0, own_max[:, None].clamp(min=0) / peak.clamp(min=1e-12), torch.zeros_like(peak))
        borrowed = torch.minimum(borrowed * scale, torch.nextafter(own_max, torch.tensor(-float("inf")))[:, None])
        out[rows] = torch.where(torch.isnan(own), borrowed, own)
    return out


def _fill_linear(volume: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Linear interpolation along d of the NaN entries of ``volume [T, D]`` (see :func:`fill_unscored`)."""
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


@dataclasses.dataclass(frozen=True)
class SearchPlan:
    """How :func:`search_face` searches d (eval_if's ``--search`` and ``--c2f_*`` options).

    ``mode`` ``c2f`` or ``full``; ``strides``, ``peaks``: the coarse-to-fine levels of the lattice
    texels (default :func:`default_strides`); ``lattice``: UV spacing of those texels (1 = every
    texel, 2 = one in four, :func:`uv_lattice`); ``window``: the others score +-window around each
    lattice neighbour's best; ``rounds``, ``radius``: propagation (+-radius around the neighbours' best).
    """

    mode: str = "c2f"
    strides: tuple[int, ...] | None = None
    peaks: int = 1
    rounds: int = 6
    lattice: int = 2
    window: int = 2
    radius: int = 2

    def __post_init__(self):
        if self.mode not in ("c2f", "full"):
            raise ValueError(f"search mode must be 'c2f' or 'full', got {self.mode!r}")

    @classmethod
    def from_options(cls, opt) -> "SearchPlan":
        return cls(opt.search, tuple(opt.c2f_strides) if opt.c2f_strides else None, opt.c2f_peaks, opt.c2f_rounds,
                   opt.c2f_lattice, opt.c2f_window, opt.c2f_radius)


def search_face(
    model,
    features: "ViewFeatures",
    setup: FaceHypotheses,
    plan: SearchPlan = SearchPlan(),
    chunk: int = 65536,
    timings: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the search of one face -> ``argmax [T]`` int64 and ``volume [T, D]`` float32 (every entry
    filled: :func:`fill_unscored`)."""
    fn = model_score_fn(model, features, setup, chunk, timings)
    dev = features.device
    if plan.mode == "full":
        vol = full_search(fn, setup.num_texels, setup.d_size, device=dev)
        return vol.argmax(1), vol
    need_nb = plan.rounds > 0 or plan.lattice > 1
    neighbours = texel_neighbours(setup) if need_nb else None
    lattice = uv_lattice(setup, neighbours, plan.lattice) if plan.lattice > 1 else None
    argmax, vol = coarse_to_fine_argmax(fn, setup.num_texels, setup.d_size, plan.strides, dev, plan.peaks, neighbours,
                                        plan.rounds, lattice, plan.window, plan.radius)
    return argmax, fill_unscored(vol, lattice=lattice, neighbours=neighbours)
