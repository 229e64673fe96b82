"""Dense layer and the dense() primitive against a NumPy reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

import lamina as lm


def np_dense(W, b, x, act=lambda z: z):
    # The textbook weighted sum, one output unit at a time.
    W, b, x = (np.asarray(a, np.float64) for a in (W, b, x))
    z = np.array([sum(W[i, j] * x[j] for j in range(W.shape[1])) + b[i] for i in range(W.shape[0])])
    return act(z)


class DenseValuesTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        ("linear", None, lambda z: z),
        ("relu", "relu", lambda z: np.maximum(z, 0)),
        ("tanh", "tanh", np.tanh),
        ("sigmoid", "sigmoid", lambda z: 1 / (1 + np.exp(-z))),
    )
    def test_matches_numpy(self, act, np_act):
        layer = lm.Dense(5, act=act)
        out_shape, params = layer.init(jax.random.key(1), (7,))
        x = jax.random.normal(jax.random.key(2), (7,))
        y = self.variant(layer.apply)(params, x)
        chex.assert_shape(y, out_shape)
        np.testing.assert_allclose(y, np_dense(params["W"], params["b"], x, np_act), rtol=1e-5, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_primitive_matches_numpy(self):
        W = jnp.arange(6.0).reshape(2, 3) / 10
        b = jnp.array([0.5, -1.0])
        x = jnp.array([1.0, -2.0, 3.0])
        y = self.variant(lambda p, x: lm.dense(p, x, act="relu"))({"W": W, "b": b}, x)
        np.testing.assert_allclose(y, np.maximum(np_dense(W, b, x), 0), rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_leading_batch_axes(self):
        layer = lm.Dense(4)
        _, params = layer.init(jax.random.key(0), (3,))
        xs = jax.random.normal(jax.random.key(1), (2, 5, 3))
        y = self.variant(layer.apply)(params, xs)
        chex.assert_shape(y, (2, 5, 4))
        ref = np.einsum("abi,oi->abo", np.asarray(xs, np.float64), np.asarray(params["W"], np.float64)) + np.asarray(params["b"])
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_init_shapes_and_no_bias(key):
    out_shape, params = lm.Dense(10).init(key, (784,))
    assert out_shape == (10,)
    chex.assert_shape(params["W"], (10, 784))
    chex.assert_shape(params["b"], (10,))
    out_shape, params = lm.Dense(3, use_bias=False).init(key, (6, 4))
    assert out_shape == (6, 3)
    assert set(params) == {"W"}
    x = jnp.ones((6, 4))
    np.testing.assert_allclose(lm.Dense(3, use_bias=False).apply(params, x), np.ones((6, 4)) @ np.asarray(params["W"]).T, rtol=1e-6)


def test_default_init_matches_torch_linear_bounds(key):
    _, params = lm.Dense(300).init(key, (400,))
    bound = 1 / np.sqrt(400)
    for leaf in (params["W"], params["b"]):
        assert float(jnp.max(jnp.abs(leaf))) <= bound
        # Uniform on [-bound, bound]: the extremes are reached closely.
        assert float(jnp.max(jnp.abs(leaf))) > 0.95 * bound
    np.testing.assert_allclose(float(jnp.var(params["W"])), bound**2 / 3, rtol=0.02)


@pytest.mark.slow
def test_vmap_equals_loop(key):
    layer = lm.Dense(4, act="gelu")
    _, params = layer.init(key, (3,))
    xs = jax.random.normal(jax.random.key(5), (6, 3))
    batched = jax.vmap(layer.apply, in_axes=(None, 0))(params, xs)
    looped = jnp.stack([layer.apply(params, x) for x in xs])
    chex.assert_trees_all_close(batched, looped, rtol=1e-6)


@pytest.mark.slow
def test_gradients_match_finite_differences(key, x64):
    layer = lm.Dense(3, act="tanh")
    _, params = layer.init(key, (4,))
    x = jax.random.normal(jax.random.key(1), (4,))
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    x_64 = jnp.asarray(x, jnp.float64)
    check_grads(lambda p, x: jnp.sum(layer.apply(p, x) ** 2), (p64, x_64), order=1, modes=["rev"])


def test_compute_dtype(key):
    layer = lm.Dense(3, dtype=jnp.bfloat16)
    _, params = layer.init(key, (4,))
    assert params["W"].dtype == jnp.float32
    y = layer.apply(params, jnp.ones(4))
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(lm.Dense(3).apply(params, jnp.ones(4))), rtol=2e-2, atol=2e-2)


def test_custom_initializers(key):
    _, params = lm.Dense(2, w_init=lm.initializers.ones, b_init=lm.initializers.constant(0.5)).init(key, (3,))
    np.testing.assert_array_equal(params["W"], np.ones((2, 3)))
    np.testing.assert_array_equal(params["b"], np.full(2, 0.5))


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda: lm.Dense(0), ValueError, ["Dense", ">= 1", "0"]),
        (lambda: lm.Dense(2.5), TypeError, ["Dense", "int", "2.5"]),
        (lambda: lm.Dense(3, act="relux"), ValueError, ["Dense(3)", "relux", "relu", "sigmoid"]),
        (lambda: lm.Dense(3, act=5), TypeError, ["Dense(3)", "int"]),
        (lambda: lm.Dense(3, w_init="glorot"), TypeError, ["Dense(3)", "w_init", "glorot"]),
    ],
)
def test_constructor_errors(make, error, words):
    with pytest.raises(error) as info:
        make()
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("wrap", [jax.jit, lambda f: f], ids=["jit", "eager"])
def test_wrong_feature_size_names_layer_and_shapes(key, wrap):
    model = lm.serial(lm.Dense(256, act="relu"), lm.Dense(255), lm.Dense(10))
    _, params = model.init(key, (784,))
    bad = (params[0], params[1], lm.Dense(10).init(key, (256,))[1])
    with pytest.raises(ValueError) as info:
        wrap(model.apply)(bad, jnp.ones(784))
    msg = str(info.value)
    assert msg.startswith("serial[2] Dense(10): expected input with last dimension 256")
    assert "(10, 256)" in msg and "(255,)" in msg


def test_wrong_rank_and_dtype(key):
    layer = lm.Dense(2)
    _, params = layer.init(key, (3,))
    with pytest.raises(ValueError, match=r"Dense\(2\).*last dimension 3.*shape \(\)"):
        layer.apply(params, jnp.float32(1.0))
    with pytest.raises(TypeError, match=r"Dense\(2\): expected a floating-point input, got x of dtype int32 with shape \(3,\)"):
        layer.apply(params, jnp.ones(3, jnp.int32))


def test_transposed_and_missing_params(key):
    layer = lm.Dense(2)
    _, params = layer.init(key, (3,))
    with pytest.raises(ValueError, match=r"Dense\(2\): expected W of shape \(2, in\), got \(3, 2\).*transposed"):
        layer.apply({"W": params["W"].T, "b": params["b"]}, jnp.ones(3))
    with pytest.raises(ValueError, match=r"no bias 'b'"):
        layer.apply({"W": params["W"]}, jnp.ones(3))
    with pytest.raises(TypeError, match=r"Dense\(2\): expected params \{'W'"):
        layer.apply([params["W"]], jnp.ones(3))
    with pytest.raises(ValueError, match=r"expected b of shape \(2,\), got \(3,\)"):
        lm.dense({"W": params["W"], "b": jnp.ones(3)}, jnp.ones(3))


def test_init_rejects_bad_key_and_shape():
    with pytest.raises(TypeError, match=r"Dense\(2\): expected a PRNG key such as jax.random.key\(0\), got int 0"):
        lm.Dense(2).init(0, (3,))
    with pytest.raises(TypeError, match=r"input_shape must be a tuple of ints.*got 3"):
        lm.Dense(2).init(jax.random.key(0), 3)
    with pytest.raises(ValueError, match=r"at least 1 dimension.*got \(\)"):
        lm.Dense(2).init(jax.random.key(0), ())


@pytest.mark.parametrize("w_init, variance", [
    (jax.nn.initializers.he_normal(), 2 / 10),        # fan-in is in_features = 10
    (jax.nn.initializers.lecun_normal(), 1 / 10),
    (jax.nn.initializers.glorot_uniform(), 2 / (10 + 1000)),
    (lm.initializers.he_normal(), 2 / 10),
])
def test_jax_and_lamina_initializers_get_the_variance_they_promise(w_init, variance):
    # JAX's initializers read fan-in from axis -2, which is `out` in the
    # (out, in) layout: called as they are, he_normal would give 2/1000.
    _, params = lm.Dense(1000, w_init=w_init).init(jax.random.key(0), (10,))
    W = np.asarray(params["W"], np.float64)
    assert W.shape == (1000, 10)
    np.testing.assert_allclose(W.var(), variance, rtol=0.06)
