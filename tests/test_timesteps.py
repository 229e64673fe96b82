"""lm.Timesteps against diffusers' formula written in torch, and its errors."""

import math

import jax
import numpy as np
import pytest
import torch

import lamina as lm


def _reference(t, dim, flip, shift, scale, max_period):
    """diffusers' get_timestep_embedding, for 1-D timesteps."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32)
                      / (half - shift))
    angles = scale * (t[:, None].float() * freqs[None])
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if flip:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1, 0, 0))
    return emb.numpy()


@pytest.mark.parametrize("dim, flip, shift, scale, max_period", [
    (8, False, 1, 1.0, 10000.0), (16, True, 0, 1.0, 10000.0), (7, True, 1, 2.5, 100.0),
    (6, False, 0.5, 1.0, 10000.0),
])
def test_equals_diffusers(dim, flip, shift, scale, max_period):
    ts = np.array([0, 1, 17, 500, 999], np.int32)
    layer = lm.Timesteps(dim, flip_sin_to_cos=flip, downscale_freq_shift=shift, scale=scale,
                         max_period=max_period)
    want = _reference(torch.as_tensor(ts), dim, flip, shift, scale, max_period)
    np.testing.assert_allclose(np.asarray(lm.forward(layer)((), ts)), want, rtol=1e-5, atol=2e-5)
    fractional = np.array([0.5, 2.25], np.float32)
    np.testing.assert_allclose(np.asarray(lm.forward(layer)((), fractional)),
                               _reference(torch.as_tensor(fractional), dim, flip, shift, scale,
                                          max_period), rtol=1e-5, atol=2e-5)
    assert layer.init(jax.random.key(0), ())[0] == (dim,)


def test_bad_configurations_and_inputs_are_refused():
    with pytest.raises(ValueError, match=r"Timesteps\(2\): num_channels // 2 = 1 equals "
                                         r"downscale_freq_shift"):
        lm.Timesteps(2)
    with pytest.raises(TypeError, match=r"downscale_freq_shift must be a number, got '0'"):
        lm.Timesteps(8, downscale_freq_shift="0")
    with pytest.raises(TypeError, match=r"expected timesteps as numbers, got dtype bool"):
        lm.Timesteps(8).apply((), np.array(True))
