"""Activations by name and as layers, against NumPy formulas."""

from math import erf

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lamina as lm
from lamina._src.layers.activations import resolve_activation

x = np.linspace(-3, 3, 13).astype(np.float32)


def np_softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


REFERENCES = {
    "identity": lambda v: v,
    "relu": lambda v: np.maximum(v, 0),
    "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
    "tanh": np.tanh,
    "softmax": np_softmax,
    "log_softmax": lambda v: np.log(np_softmax(v)),
    # torch's nn.GELU(): the exact form; and its approximate="tanh"
    "gelu": lambda v: np.array([0.5 * t * (1 + erf(t / np.sqrt(2))) for t in v]),
    "gelu_tanh": lambda v: 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3))),
    "silu": lambda v: v / (1 + np.exp(-v)),
    "leaky_relu": lambda v: np.where(v >= 0, v, 0.01 * v),
    "elu": lambda v: np.where(v > 0, v, np.exp(v) - 1),
    "softplus": lambda v: np.log1p(np.exp(v)),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("wrap", [jax.jit, lambda f: f], ids=["jit", "eager"])
def test_named_activation_layer_matches_numpy(name, wrap):
    layer = lm.Activation(name)
    out_shape, params = layer.init(jax.random.key(0), x.shape)
    assert out_shape == x.shape and params == ()
    y = wrap(layer.apply)(params, jnp.asarray(x))
    np.testing.assert_allclose(y, REFERENCES[name](x.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_exact_gelu_via_callable():
    fn, name = resolve_activation(lambda v: jax.nn.gelu(v, approximate=False))
    ref = np.array([0.5 * v * (1 + erf(v / np.sqrt(2))) for v in x.astype(np.float64)])
    np.testing.assert_allclose(fn(jnp.asarray(x)), ref, rtol=1e-5, atol=1e-6)
    assert name == "<lambda>"


def test_shortcut_layers():
    for layer, name in [(lm.Relu(), "relu"), (lm.Sigmoid(), "sigmoid"), (lm.Tanh(), "tanh"), (lm.Softmax(), "softmax"), (lm.LogSoftmax(), "log_softmax")]:
        assert layer.name == f"Activation({name})"
        np.testing.assert_allclose(layer.apply((), jnp.asarray(x)), REFERENCES[name](x.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_callable_name_and_batch_axes():
    layer = lm.Activation(jax.nn.relu)
    assert layer.name == "Activation(relu)"
    xs = jnp.asarray(np.stack([x, -x]))
    chex.assert_trees_all_close(layer.apply((), xs), np.maximum(np.stack([x, -x]), 0))


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError) as info:
        lm.Activation("relu2")
    msg = str(info.value)
    assert "Activation: unknown activation 'relu2'" in msg
    for name in ("relu", "sigmoid", "tanh", "softmax", "gelu"):
        assert name in msg


def test_every_listed_name_resolves_to_jax_function():
    for name, fn in lm.ACTIVATIONS.items():
        assert resolve_activation(name) == (fn, name)
