"""Per-texel confidence of a score volume, and the fallback to the base surface where it is low.

The implicit function scores D hypotheses along each texel's normal. Where the photographs say
something (two or more views see the texel, the surface textured enough to match), the scores have
one clear peak; where they say nothing (a texel seen by one view, a grazing angle, a flat, shiny
patch, a view pair too close to triangulate) they are flat or have several peaks of similar height,
and the argmax lands anywhere in the +-20 mm range. The confidence of a texel is

    conf = peak - rival,   rival = the best score more than ``exclusion`` steps from the peak

in [0, 1]: 0 for a flat or ambiguous score, close to the peak score for one sharp peak (a texel
seen by fewer than two views has score 0 everywhere, so conf 0). :func:`fallback_weight` turns it
into the share of the searched displacement a texel keeps: 0 at or below ``low``, 1 from ``high``,
linear in between. The rest comes from :func:`continue_confident`: the smooth continuation of the
confident texels' displacement into the texels without evidence (the inner lips of a closed mouth,
the underside of the chin few views see, the nostril rims), fading to the base surface over about
:data:`CONTINUATION_TEXELS` texels; the base mesh's error is smooth (it comes from a few millimetres
of landmark error), so the correction its confident neighbours found is a better guess there than
none. Stage 3 uses the confidence smoothed over a few texels (:func:`smooth_confidence`), so a single
flat texel among confident ones still takes the regulariser's answer (filling it from its neighbours
is what the regulariser is for).
"""

from __future__ import annotations

import numpy as np

EXCLUSION_SIGMAS = 3.0  # the rival peak is searched beyond this many score-target sigmas from the peak
SMOOTH_TEXELS = 3.0  # std of the spatial smoothing of the confidence for stage 3, in texels at S = 256
CONTINUATION_TEXELS = 25.0  # how far (texels at S = 256) a confident correction carries into texels without evidence


def score_confidence(volume: np.ndarray, exclusion_steps: float) -> np.ndarray:
    """``volume [D, ...]`` scores (hypotheses first, any trailing shape: ``[D, S, S]`` or ``[D, T]``)
    -> confidence ``[...]`` float32 in [0, 1]: the peak score minus the best score more than
    ``exclusion_steps`` hypotheses away from the peak."""
    v = np.asarray(volume, dtype=np.float32)
    if v.ndim < 1 or v.shape[0] < 2:
        raise ValueError(f"volume must be [D, ...] with D >= 2, got shape {v.shape}")
    if exclusion_steps < 0:
        raise ValueError(f"exclusion_steps must be >= 0, got {exclusion_steps}")
    flat = np.nan_to_num(v.reshape(v.shape[0], -1), nan=0.0)
    arg = flat.argmax(0)
    peak = flat.max(0)
    d = np.arange(flat.shape[0])[:, None]
    far = np.abs(d - arg[None, :]) > exclusion_steps
    rival = np.where(far, flat, 0.0).max(0)
    return np.clip(peak - rival, 0.0, 1.0).astype(np.float32).reshape(v.shape[1:])


def exclusion_steps(sigma_mm: float, interval_scale_mm: float) -> float:
    """The rival-peak exclusion radius in hypothesis steps: :data:`EXCLUSION_SIGMAS` score-target sigmas."""
    return EXCLUSION_SIGMAS * float(sigma_mm) / float(interval_scale_mm)


def fallback_weight(conf: np.ndarray, low: float, high: float) -> np.ndarray:
    """Share of the searched displacement a texel keeps: 0 for ``conf <= low``, 1 for ``conf >= high``,
    linear in between (``float32``, same shape); ``high == 0`` turns the fallback off (1 everywhere)."""
    if high == 0:
        return np.ones(np.shape(conf), np.float32)
    if not 0.0 <= low < high:
        raise ValueError(f"need 0 <= conf_low < conf_high, got {low} and {high}")
    return np.clip((np.asarray(conf, np.float32) - low) / (high - low), 0.0, 1.0).astype(np.float32)


def smooth_confidence(conf: np.ndarray, mask: np.ndarray, sigma_texels: float | None = None) -> np.ndarray:
    """``conf [S, S]`` averaged over the texels of ``mask`` with a Gaussian of ``sigma_texels``
    (default :data:`SMOOTH_TEXELS` scaled with S / 256); 0 outside ``mask``."""
    from scipy import ndimage

    S = conf.shape[0]
    sigma = SMOOTH_TEXELS * S / 256.0 if sigma_texels is None else float(sigma_texels)
    m = mask.astype(np.float32)
    if sigma <= 0:
        return np.where(mask, conf, 0.0).astype(np.float32)
    num = ndimage.gaussian_filter(np.where(mask, conf, 0.0).astype(np.float32), sigma, mode="constant")
    den = ndimage.gaussian_filter(m, sigma, mode="constant")
    return np.where(mask, num / np.maximum(den, 1e-6), 0.0).astype(np.float32)


def grid_laplacian(mask: np.ndarray):
    """The graph Laplacian ``L = D - A`` (scipy CSR ``[n, n]``) of the 4-neighbour grid over the ``n`` texels of
    ``mask [S, S]`` (row-major order), and ``index [S, S]`` int64: each texel's row (-1 outside the mask)."""
    import scipy.sparse as sp

    mask = np.asarray(mask, dtype=bool)
    n = int(mask.sum())
    idx = np.full(mask.shape, -1, np.int64)
    idx[mask] = np.arange(n)
    rows, cols = [], []
    for a, b in ((idx[:, :-1], idx[:, 1:]), (idx[:-1, :], idx[1:, :])):
        ok = (a >= 0) & (b >= 0)
        rows.append(a[ok])
        cols.append(b[ok])
    i, j = np.concatenate(rows), np.concatenate(cols)
    A = sp.csr_matrix((np.ones(2 * len(i)), (np.r_[i, j], np.r_[j, i])), shape=(n, n))
    return (sp.diags(np.asarray(A.sum(1)).ravel()) - A).tocsr(), idx


def continue_confident(values: np.ndarray, weight: np.ndarray, mask: np.ndarray,
                       reach_texels: float | None = None) -> np.ndarray:
    """Keep ``values`` where the evidence is strong and continue them smoothly where it is weak.

    ``values [S, S]`` (e.g. displacement in steps), ``weight [S, S]`` in [0, 1] (:func:`fallback_weight`),
    ``mask [S, S]`` bool (the texels that exist). With ``f`` the minimiser over the mask of

        sum_i w_i (f_i - v_i)^2 + sum_{4-neighbours i~j} (f_i - f_j)^2 + eps * sum_i f_i^2,

    ``eps = 1 / reach^2`` (``reach_texels`` default :data:`CONTINUATION_TEXELS` scaled with S / 256: the
    distance over which a continuation fades to 0, the base surface), returns ``w * v + (1 - w) * f``
    (float32, 0 outside the mask): exactly ``v`` where ``w = 1``, all zeros when no texel has weight.
    """
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    v = np.asarray(values, dtype=np.float64)
    w = np.clip(np.asarray(weight, dtype=np.float64), 0.0, 1.0)
    mask = np.asarray(mask, dtype=bool)
    S = v.shape[0]
    reach = CONTINUATION_TEXELS * S / 256.0 if reach_texels is None else float(reach_texels)
    out = np.zeros(v.shape, np.float32)
    if not mask.any():
        return out
    L, _ = grid_laplacian(mask)
    wm, vm = w[mask], v[mask]
    K = (sp.diags(wm + 1.0 / max(reach, 1e-6) ** 2) + L).tocsc()
    f = spla.splu(K).solve(wm * vm)
    out[mask] = (wm * vm + (1.0 - wm) * f).astype(np.float32)
    return out
