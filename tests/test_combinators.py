"""serial, parallel, residual, mlp, Concat: values against NumPy compositions."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import lamina as lm


def np_dense(p, x, act=lambda z: z):
    return act(np.asarray(x, np.float64) @ np.asarray(p["W"], np.float64).T + np.asarray(p["b"], np.float64))


relu = lambda z: np.maximum(z, 0)  # noqa: E731


@pytest.mark.parametrize("wrap", [jax.jit, lambda f: f], ids=["jit", "eager"])
def test_serial_is_composition(key, wrap):
    model = lm.serial(lm.Dense(8, act="relu"), lm.Dense(5, act="tanh"), lm.Dense(3))
    out_shape, params = model.init(key, (4,))
    assert out_shape == (3,)
    x = jax.random.normal(jax.random.key(1), (4,))
    ref = np_dense(params[2], np_dense(params[1], np_dense(params[0], x, relu), np.tanh))
    y = wrap(model.apply)(params, x)
    chex.assert_shape(y, (3,))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_mlp_equals_serial(key):
    model = lm.mlp([6, 6, 2], act="sigmoid", final_act="softmax")
    assert model.name == "serial(Dense(6, sigmoid), Dense(6, sigmoid), Dense(2, softmax))"
    _, params = model.init(key, (3,))
    x = jnp.array([0.1, -0.2, 0.3])
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    z = np_dense(params[2], np_dense(params[1], np_dense(params[0], x, sig), sig))
    ref = np.exp(z) / np.exp(z).sum()
    np.testing.assert_allclose(model.apply(params, x), ref, rtol=1e-5)


@pytest.mark.parametrize("wrap", [jax.jit, lambda f: f], ids=["jit", "eager"])
def test_parallel_and_concat(key, wrap):
    model = lm.serial(lm.parallel(lm.Dense(3), lm.Identity(), lm.Dense(2, act="relu")), lm.Concat())
    out_shape, params = model.init(key, (4,))
    assert out_shape == (9,)
    x = jax.random.normal(jax.random.key(2), (4,))
    p = params[0]
    ref = np.concatenate([np_dense(p[0], x), np.asarray(x), np_dense(p[2], x, relu)])
    np.testing.assert_allclose(wrap(model.apply)(params, x), ref, rtol=1e-5, atol=1e-6)
    branches = lm.parallel(lm.Dense(3), lm.Identity())
    shapes, _ = branches.init(key, (4,))
    assert shapes == ((3,), (4,))


@pytest.mark.parametrize("wrap", [jax.jit, lambda f: f], ids=["jit", "eager"])
def test_residual_adds_input(key, wrap):
    block = lm.residual(lm.serial(lm.Dense(4, act="relu"), lm.Dense(4)))
    out_shape, params = block.init(key, (4,))
    assert out_shape == (4,)
    assert isinstance(params, tuple) and len(params) == 1
    x = jax.random.normal(jax.random.key(3), (4,))
    inner = params[0]
    ref = np.asarray(x, np.float64) + np_dense(inner[1], np_dense(inner[0], x, relu))
    np.testing.assert_allclose(wrap(block.apply)(params, x), ref, rtol=1e-5, atol=1e-6)


def test_residual_shape_mismatch_is_caught_at_init(key):
    with pytest.raises(ValueError, match=r"residual\(Dense\(5\)\): x \+ f\(x\) needs f to keep the shape.*maps \(4,\) to \(5,\)"):
        lm.residual(lm.Dense(5)).init(key, (4,))


def test_nested_error_path(key):
    model = lm.serial(lm.Dense(4), lm.residual(lm.serial(lm.Dense(4), lm.Dense(3))))
    with pytest.raises(ValueError) as info:
        model.init(key, (2,))
    assert str(info.value).startswith("serial[1] residual(serial(Dense(4), Dense(3))): x + f(x) needs f to keep the shape")
    _, params = lm.serial(lm.Dense(4), lm.residual(lm.serial(lm.Dense(4), lm.Dense(4)))).init(key, (2,))
    bad_model = lm.serial(lm.Dense(4), lm.residual(lm.serial(lm.Dense(4), lm.Dense(4, use_bias=False))))
    with pytest.raises(ValueError) as info:
        bad_model.apply(params, jnp.ones(2))
    assert str(info.value).startswith("serial[1].residual[0].serial[1] Dense(4): params hold a bias 'b'")


@pytest.mark.slow
def test_vmap_equals_loop_for_combinators(key):
    model = lm.serial(lm.residual(lm.mlp([5, 5])), lm.parallel(lm.Dense(2), lm.LayerNorm()), lm.Concat())
    _, params = model.init(key, (5,))
    xs = jax.random.normal(jax.random.key(4), (7, 5))
    batched = jax.vmap(model.apply, in_axes=(None, 0))(params, xs)
    looped = jnp.stack([model.apply(params, x) for x in xs])
    chex.assert_trees_all_close(batched, looped, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_grad_through_all_combinators_matches_finite_differences(key, x64):
    model = lm.serial(
        lm.residual(lm.serial(lm.Dense(3, act="tanh"), lm.LayerNorm())),
        lm.parallel(lm.Dense(2, act="softplus"), lm.Activation("sigmoid")),
        lm.Concat(),
        lm.Dropout(0.5),
        lm.Flatten(),
        lm.Dense(1),
    )
    _, params = model.init(key, (3,))
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    x_64 = jnp.asarray([0.3, -0.7, 1.1], jnp.float64)
    check_grads(lambda p, x: jnp.sum(model.apply(p, x)), (p64, x_64), order=1, modes=["rev", "fwd"])


@pytest.mark.parametrize(
    "make, error, pattern",
    [
        (lambda: lm.serial(), ValueError, r"serial: needs at least one layer"),
        (lambda: lm.serial(lm.Dense(2), lm.Relu), TypeError, r"serial: argument 1 must be a lamina Layer.*forget to call it"),
        (lambda: lm.parallel(3), TypeError, r"parallel: argument 0 must be a lamina Layer, got int 3"),
        (lambda: lm.residual("relu"), TypeError, r"residual: layer must be a lamina Layer"),
        (lambda: lm.mlp(10), TypeError, r"mlp: features must be a list of layer sizes.*got int 10"),
        (lambda: lm.mlp([]), ValueError, r"mlp: features must name at least one"),
        (lambda: lm.mlp([4, 0]), ValueError, r"Dense: out_features must be >= 1, got 0"),
    ],
)
def test_constructor_errors(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


def test_params_structure_errors(key):
    model = lm.mlp([4, 2])
    _, params = model.init(key, (3,))
    with pytest.raises(ValueError, match=r"serial\(.*\): expected params as a tuple of 2 entries \(one per layer\), got a tuple of length 1"):
        model.apply(params[:1], jnp.ones(3))


def test_concat_errors(key):
    with pytest.raises(ValueError, match=r"Concat\(axis=-1\): expects a tuple of inputs"):
        lm.Concat().init(key, (3,))
    with pytest.raises(ValueError, match=r"differ outside axis 0"):
        lm.Concat(axis=0).init(key, ((2, 3), (2, 4)))
