"""Property tests: random lamina architectures keep the layer contract.

Hypothesis builds models from every layer and combinator (random depth,
widths, activations, `residual`, `parallel` + `Concat`, `Dropout`,
`LayerNorm`, `Flatten`) on random input shapes, and `check_layer` checks each
against its independent references: declared shapes, a per-example loop for
vmap, eager apply for jit, finite differences for gradients.

Widths come from a small set on purpose: eager JAX compiles each primitive
once per shape, so models built from a few sizes share those programs and
the 100 examples below (80 + 20) run in about a minute on two cores. Every
activation in `lm.ACTIVATIONS` is drawn, kinked ones (relu, hard_tanh, ...):
check_layer's float64 step of 1e-6 and its second random input make
finite differences reliable across kinks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lamina as lm
from lamina import testing

pytestmark = pytest.mark.slow  # the tier `pytest -m 'not slow'` leaves out

SIZES = st.sampled_from([2, 3])
ACTS = st.sampled_from([None] + sorted(lm.ACTIVATIONS))

# derandomize: CI runs the same examples every time; no example database.
PROPERTY = settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _leaf(draw, shape):
    """A layer that keeps every axis but the last: (layer, output shape)."""
    kind = draw(st.sampled_from(["dense", "dense", "dense", "act", "act", "norm", "dropout"]))
    if kind == "dense":
        width = draw(SIZES)
        return lm.Dense(width, act=draw(ACTS), use_bias=draw(st.booleans())), shape[:-1] + (width,)
    if kind == "act":
        return lm.Activation(draw(ACTS.filter(bool))), shape
    if kind == "dropout":
        return lm.Dropout(draw(st.sampled_from([0.0, 0.25, 0.5]))), shape
    return lm.LayerNorm(), shape


def _block(draw, shape, nest):
    """A leaf, or (while `nest` > 0) a residual or parallel block of smaller ones."""
    kind = draw(st.sampled_from(["leaf", "leaf", "leaf", "residual", "parallel"] if nest else ["leaf"]))
    if kind == "residual":
        layers, s = [], shape
        for _ in range(draw(st.integers(1, 2))):
            layer, s = _block(draw, s, nest - 1)
            layers.append(layer)
        # Close the block with a Dense back to the input width: x + f(x) needs it.
        layers.append(lm.Dense(shape[-1], act=draw(ACTS)))
        return lm.residual(lm.serial(*layers)), shape
    if kind == "parallel":
        branches, widths = [], []
        for _ in range(2):
            # Wide inputs get Dense branches, so every width stays within 2..6.
            layer, s = _leaf(draw, shape) if shape[-1] <= 3 else _dense(draw, shape)
            branches.append(layer)
            widths.append(s[-1])
        return lm.serial(lm.parallel(*branches), lm.Concat()), shape[:-1] + (sum(widths),)
    return _leaf(draw, shape)


def _dense(draw, shape):
    width = draw(SIZES)
    return lm.Dense(width, act=draw(ACTS)), shape[:-1] + (width,)


@st.composite
def architectures(draw):
    """A random model: (model, input_shape, the output shape tracked by hand)."""
    shape = tuple(draw(st.sampled_from([(2,), (3,), (2, 2), (2, 3)])))
    layers, s = [], shape
    if len(shape) == 2 and draw(st.booleans()):
        layers.append(lm.Flatten())
        s = (shape[0] * shape[1],)
    for _ in range(draw(st.integers(1, 3))):
        layer, s = _block(draw, s, nest=2)
        layers.append(layer)
    model = layers[0] if len(layers) == 1 else lm.serial(*layers)
    return model, shape, s


@PROPERTY
@given(architectures())
def test_random_architectures_pass_check_layer(case):
    model, input_shape, output_shape = case
    testing.check_layer(model, input_shape, key=jax.random.key(len(model.name)))
    # The shape the strategy tracked by hand is the shape lamina infers.
    assert model.init(jax.random.key(0), input_shape)[0] == output_shape


@settings(PROPERTY, max_examples=10)
@given(architectures())
def test_random_architectures_agree_with_param_shapes_trace_and_forward(case):
    model, input_shape, output_shape = case
    out_shape, params = model.init(jax.random.key(1), input_shape)
    abstract_out, abstract = lm.param_shapes(model, input_shape)
    assert abstract_out == out_shape == output_shape
    assert jax.tree.map(lambda a: (a.shape, a.dtype), abstract) == jax.tree.map(
        lambda a: (a.shape, a.dtype), params
    )
    lm.check_params(model, params, input_shape)  # init's own params always fit
    x = jax.device_put(np.random.default_rng(0).standard_normal(input_shape).astype(np.float32))
    y = model.apply(params, x)
    steps = lm.trace(model, params, x)
    # The last step is the outermost layer to finish: its output is the model's.
    np.testing.assert_allclose(steps[-1].output, y, rtol=1e-6)
    xs = jnp.stack([x, -x])
    ys = lm.forward(model)(params, xs)
    np.testing.assert_allclose(ys[1], model.apply(params, -x), rtol=1e-5, atol=1e-6)
