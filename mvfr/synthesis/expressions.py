"""FaceScape's 20 expressions as ICT Face Model blend-shape weights.

Each FaceScape expression (``mvfr.datafolder.EXPRESSION_NAMES``) is a fixed combination of the
ICT model's ARKit-style shapes (:data:`EXPRESSION_MAP`, weights at full intensity, in [0, 1]).
A capture draws an intensity in [0.6, 1.0] (see :func:`expression_weights`) that scales the whole
combination, so two captures of one expression differ the way two takes by one person do.
Sided shapes are written once with ``_LR`` and expand to ``_L`` and ``_R``.

Which expressions open the mouth (teeth and tongue visible): mouth_stretch, jaw_left, jaw_right,
jaw_forward, grin, and partly smile and anger. Closed eyes: eye_closed.
"""

from __future__ import annotations

import numpy as np

from mvfr.datafolder import EXPRESSION_NAMES

EXPRESSION_MAP: dict[str, dict[str, float]] = {
    "neutral": {},
    "smile": {"mouthSmile_LR": 0.85, "cheekSquint_LR": 0.6, "eyeSquint_LR": 0.25, "jawOpen": 0.12, "mouthUpperUp_LR": 0.2},
    "mouth_stretch": {"jawOpen": 0.85, "mouthStretch_LR": 0.5, "mouthLowerDown_LR": 0.4, "mouthUpperUp_LR": 0.25},
    "anger": {"browDown_LR": 0.9, "noseSneer_LR": 0.55, "eyeSquint_LR": 0.45, "mouthUpperUp_LR": 0.35, "jawOpen": 0.1,
              "mouthPress_LR": 0.3},
    "jaw_left": {"jawLeft": 0.9, "jawOpen": 0.3, "mouthLeft": 0.3},
    "jaw_right": {"jawRight": 0.9, "jawOpen": 0.3, "mouthRight": 0.3},
    "jaw_forward": {"jawForward": 0.9, "jawOpen": 0.25},
    "mouth_left": {"mouthLeft": 0.9, "mouthPress_LR": 0.2},
    "mouth_right": {"mouthRight": 0.9, "mouthPress_LR": 0.2},
    "dimpler": {"mouthDimple_LR": 0.9, "mouthPress_LR": 0.3, "mouthStretch_LR": 0.15},
    "chin_raiser": {"mouthShrugLower": 0.9, "mouthShrugUpper": 0.3, "mouthClose": 0.2, "mouthPress_LR": 0.2},
    "lip_puckerer": {"mouthPucker": 0.95, "mouthFunnel": 0.2},
    "lip_funneler": {"mouthFunnel": 0.9, "jawOpen": 0.2},
    "sadness": {"browInnerUp_LR": 0.8, "mouthFrown_LR": 0.75, "mouthShrugLower": 0.3, "eyeSquint_LR": 0.15},
    "lip_roll": {"mouthRollLower": 0.85, "mouthRollUpper": 0.75},
    "grin": {"mouthSmile_LR": 1.0, "mouthStretch_LR": 0.35, "cheekSquint_LR": 0.7, "jawOpen": 0.35,
             "mouthUpperUp_LR": 0.5, "mouthLowerDown_LR": 0.5, "eyeSquint_LR": 0.35},
    "cheek_blowing": {"cheekPuff_LR": 1.0, "mouthPress_LR": 0.3, "mouthPucker": 0.2},
    "eye_closed": {"eyeBlink_LR": 1.0},
    "brow_raiser": {"browInnerUp_LR": 1.0, "browOuterUp_LR": 0.9, "eyeWide_LR": 0.35},
    "brow_lower": {"browDown_LR": 1.0, "eyeSquint_LR": 0.3, "noseSneer_LR": 0.2},
}
OPEN_MOUTH = ("mouth_stretch", "jaw_left", "jaw_right", "jaw_forward", "grin")


def expand_sides(combo: dict[str, float]) -> dict[str, float]:
    """``{"mouthSmile_LR": w}`` -> ``{"mouthSmile_L": w, "mouthSmile_R": w}`` (other names unchanged)."""
    out = {}
    for name, w in combo.items():
        if name.endswith("_LR"):
            out[name[:-3] + "_L"] = w
            out[name[:-3] + "_R"] = w
        else:
            out[name] = w
    return out


def expression_weights(expression: str, shape_names: tuple[str, ...], intensity: float = 1.0,
                       asymmetry: float = 0.0) -> np.ndarray:
    """Blend-shape weights ``[len(shape_names)]`` in [0, 1] of a FaceScape expression.

    ``intensity`` scales the whole combination; ``asymmetry`` in [-1, 1] moves weight between the
    subject's left (``_L``, > 0) and right (``_R``) shapes by up to 15 %.
    """
    if expression not in EXPRESSION_MAP:
        raise KeyError(f"unknown FaceScape expression {expression!r}; known: {', '.join(EXPRESSION_NAMES)}")
    out = np.zeros(len(shape_names))
    index = {n: i for i, n in enumerate(shape_names)}
    for name, w in expand_sides(EXPRESSION_MAP[expression]).items():
        if name not in index:
            raise KeyError(f"expression {expression!r} uses shape {name!r}, which the model does not have")
        side = 1.0 + 0.15 * asymmetry * (1 if name.endswith("_L") else -1 if name.endswith("_R") else 0)
        out[index[name]] = w * intensity * side
    return np.clip(out, 0.0, 1.0)


def sample_expression_weights(expression: str, shape_names: tuple[str, ...], rng: np.random.Generator) -> np.ndarray:
    """One capture's weights: intensity ~ U(0.6, 1.0), asymmetry ~ U(-1, 1)."""
    return expression_weights(expression, shape_names, float(rng.uniform(0.6, 1.0)), float(rng.uniform(-1, 1)))
