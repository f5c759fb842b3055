"""Stage 2's multi-view search, one job per module.

- :mod:`mvfr.mvs.geometry`: hypotheses along the normal, their projection (``FaceHypotheses``)
- :mod:`mvfr.mvs.sampling`: bilinear sampling of per-view feature maps
- :mod:`mvfr.mvs.aggregation`: masked cross-view mean, variance and view count
- :mod:`mvfr.mvs.search`: exhaustive and coarse-to-fine search over d
- :mod:`mvfr.mvs.training`: training patches, hypotheses and labels
- :mod:`mvfr.mvs.face_inputs`: one face's inputs read from the DATA_FOLDER (the only file IO)

Visibility is :mod:`mvfr.visibility` (shared with the other stages). The model
(:mod:`models.implicit_function`) depends on geometry, sampling and aggregation only.
"""
