"""predict_steps with ``tile <= 0`` (one window over the mask's bounding box) against tiled inference."""

import numpy as np
import torch

from models.reg_net import RegNet3D
from mvfr.regularisation import predict_steps


def test_single_window_equals_tiled_and_whole_volume_inference():
    torch.manual_seed(0)
    model = RegNet3D(base_channels=2, levels=2)
    torch.nn.init.normal_(model.head.weight, std=0.2)  # a non-trivial residual
    S = 40
    vol = np.random.default_rng(0).random((13, S, S)).astype(np.float32)
    mask = np.zeros((S, S), bool)
    mask[21:33, 5:14] = True  # off-centre: the window is cropped on every side but one
    whole = predict_steps(model, vol, mask, tile=S, overlap=0)  # one plain window over everything
    tiled = predict_steps(model, vol, mask, tile=8, overlap=4)  # overlap raised to the receptive radius
    single = predict_steps(model, vol, mask, tile=0)
    assert np.abs(whole[mask]).max() > 0.05  # a non-trivial answer
    np.testing.assert_allclose(single, whole, atol=1e-5)
    np.testing.assert_allclose(single, tiled, atol=1e-5)
    assert (single[~mask] == 0).all()
    assert (predict_steps(model, vol, np.zeros((S, S), bool), tile=0) == 0).all()
