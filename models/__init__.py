"""Torch networks only: the per-view feature extractor and the implicit function (stage 2)."""

from models.feature_net import FeatureNet
from models.implicit_function import ImplicitFunction, build_implicit_function

__all__ = ["FeatureNet", "ImplicitFunction", "build_implicit_function"]
