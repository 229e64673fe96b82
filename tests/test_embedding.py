"""Embedding against torch.nn.Embedding, and what happens to out-of-range ids."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lamina as lm

torch = pytest.importorskip("torch")  # the independent reference


def from_torch_module(layer, module, ids_shape):
    _, like = layer.init(jax.random.key(0), ids_shape)
    state = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    params = layer.params_from_torch(state, like)
    back = layer.torch_params(params)
    assert list(back) == list(state) == ["weight"]
    np.testing.assert_array_equal(back["weight"], state["weight"])
    return params


@pytest.mark.parametrize("num, features, ids_shape", [
    (10, 4, ()), (10, 4, (5,)), (7, 3, (2, 3)), (50, 16, (4, 2, 3)), (1, 2, (3,)),
])
@pytest.mark.parametrize("wrap", [jax.jit, lambda f: f], ids=["jit", "eager"])
def test_matches_torch(num, features, ids_shape, wrap):
    torch.manual_seed(num + features)
    module = torch.nn.Embedding(num, features)
    layer = lm.Embedding(num, features)
    params = from_torch_module(layer, module, ids_shape)
    ids = torch.randint(0, num, ids_shape)
    with torch.no_grad():
        want = module(ids).numpy()
    got = wrap(layer.apply)(params, jnp.asarray(ids.numpy(), jnp.int32))
    assert got.shape == ids_shape + (features,) == layer.init(jax.random.key(0), ids_shape)[0]
    np.testing.assert_array_equal(got, want)


def test_weight_gradient_matches_torch():
    torch.manual_seed(0)
    module = torch.nn.Embedding(6, 3)
    layer = lm.Embedding(6, 3)
    params = from_torch_module(layer, module, (5,))
    ids = torch.tensor([1, 4, 1, 0, 1])
    r = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    (module(ids) * torch.tensor(r)).sum().backward()
    grads = jax.grad(lambda p: jnp.sum(layer.apply(p, jnp.asarray(ids.numpy())) * r))(params)
    np.testing.assert_allclose(grads["W"], module.weight.grad.numpy(), rtol=1e-6, atol=1e-6)


def test_default_init_is_standard_normal_like_torch(key):
    out_shape, params = lm.Embedding(1000, 64).init(key, (3,))
    W = np.asarray(params["W"])
    assert out_shape == (3, 64) and W.shape == (1000, 64) and W.dtype == np.float32
    torch.manual_seed(0)
    theirs = torch.nn.Embedding(1000, 64).weight.detach().numpy()
    for w in (W, theirs):
        assert abs(w.mean()) < 0.01 and abs(w.std() - 1.0) < 0.01


@pytest.mark.slow
def test_integer_dtypes(key):
    _, params = lm.Embedding(200, 2).init(key, (3,))
    for dtype in (jnp.int8, jnp.uint8, jnp.int16, jnp.int32, jnp.uint32):
        ids = jnp.array([0, 1, 100], dtype)
        np.testing.assert_array_equal(lm.Embedding(200, 2).apply(params, ids),
                                      params["W"][np.array([0, 1, 100])])
    # A Python list and a NumPy array are ids too.
    np.testing.assert_array_equal(lm.Embedding(200, 2).apply(params, [3, 199]),
                                  params["W"][np.array([3, 199])])
    np.testing.assert_array_equal(lm.Embedding(200, 2).apply(params, np.int64(7)),
                                  params["W"][7])


@pytest.mark.parametrize("ids, words", [
    ([1, 10, 3], r"id 10 at index \(1,\) is out of range: ids must be in \[0, 10\) for a "
                 r"table of 10 rows$"),
    ([[0, 1], [-1, 12]], r"id -1 at index \(1, 0\) is out of range: ids must be in \[0, 10\) "
                         r"for a table of 10 rows \(2 ids are out of range\)$"),
    (np.int32(99), r"id 99 at index \(\) is out of range"),
    (np.array([-3], np.int8), r"id -3 at index \(0,\) is out of range"),
])
def test_concrete_out_of_range_ids_raise(key, ids, words):
    layer = lm.Embedding(10, 4)
    _, params = layer.init(key, (2,))
    with pytest.raises(ValueError, match=r"^Embedding\(10, 4\): " + words) as info:
        layer.apply(params, ids)
    assert isinstance(info.value, lm.LaminaError)
    with pytest.raises(ValueError, match=words):
        layer.apply(params, jnp.asarray(ids))  # a concrete jax.Array, outside jit
    # Gradients with respect to the params see the concrete ids too.
    with pytest.raises(ValueError, match=words.rstrip("$")):  # JAX appends a note
        jax.grad(lambda p: layer.apply(p, ids).sum())(params)


@pytest.mark.slow
def test_traced_out_of_range_ids_give_nan_rows(key):
    layer = lm.Embedding(10, 4)
    _, params = layer.init(key, (2,))
    ids = jnp.array([3, 10, -1, 9, 1000, -10])
    bad = np.array([False, True, True, False, True, True])
    batched = lm.forward(layer)
    for fn, ids_in in ((jax.jit(layer.apply), ids),
                       (jax.vmap(layer.apply, in_axes=(None, 0)), ids),
                       (batched, ids[:, None])):
        got = np.asarray(fn(params, ids_in)).reshape(6, 4)
        assert np.isnan(got[bad]).all()
        np.testing.assert_array_equal(got[~bad], params["W"][np.array([3, 9])])
    # Narrow ids: a negative id must not count from the end, 255 is out of range.
    for ids_in in (jnp.array([-1, 10, 2], jnp.int8), jnp.array([255, 10, 2], jnp.uint8)):
        got = jax.jit(layer.apply)(params, ids_in)
        assert np.isnan(got[:2]).all()
        np.testing.assert_array_equal(got[2], params["W"][2])
    # The NaN reaches the loss, where it cannot be missed.
    loss = jax.jit(lambda p, i: jnp.sum(layer.apply(p, i)))
    assert np.isnan(loss(params, jnp.array([1, 11])))
    assert np.isfinite(loss(params, jnp.array([1, 9])))


@pytest.mark.slow
def test_check_layer():
    lm.testing.check_layer(lm.Embedding(12, 5), (4,), input_dtype=jnp.int32, int_high=12)
    lm.testing.check_layer(lm.Embedding(3, 2), (2, 3), input_dtype=jnp.int32, int_high=3)


def test_in_a_model(key):
    model = lm.serial(lm.Embedding(20, 8), lm.Flatten(), lm.Dense(3))
    _, params = model.init(key, (5,))
    assert lm.forward(model)(params, jnp.zeros((7, 5), jnp.int32)).shape == (7, 3)
    s = lm.summary(model, (5,), show=False, input_dtype=jnp.int32)
    assert s.rows[0].params == 20 * 8 and s.rows[0].flops == 0  # a lookup, no arithmetic


def test_values_equality_hash_pickle_repr():
    layer = lm.Embedding(10, 4)
    again = pickle.loads(pickle.dumps(layer))
    assert again == layer and hash(again) == hash(layer)
    assert repr(layer) == layer.name == "Embedding(10, 4)"
    assert layer != lm.Embedding(10, 5) and layer != lm.Embedding(11, 4)
    assert lm.Embedding.from_config(layer.config()) == layer
    assert layer.replace(features=6) == lm.Embedding(10, 6)


@pytest.mark.parametrize("make, error, words", [
    (lambda: lm.Embedding(0, 4), ValueError, r"^Embedding: num_embeddings must be >= 1, got 0"),
    (lambda: lm.Embedding(10, -1), ValueError, r"features must be >= 1, got -1"),
    (lambda: lm.Embedding(10.0, 4), TypeError, r"num_embeddings must be an int, got float"),
    (lambda: lm.Embedding(10, True), TypeError, r"features must be an int, got bool"),
])
def test_constructor_errors(make, error, words):
    with pytest.raises(error, match=words):
        make()


def test_apply_errors(key):
    layer = lm.Embedding(10, 4)
    _, params = layer.init(key, (2,))
    for wrap in (jax.jit, lambda f: f):
        with pytest.raises(TypeError, match=r"^Embedding\(10, 4\): expected integer ids, got ids "
                                            r"of dtype float32 with shape \(2,\); cast them"):
            wrap(layer.apply)(params, jnp.array([1.0, 2.0]))
        with pytest.raises(TypeError, match=r"expected integer ids, got ids of dtype bool"):
            wrap(layer.apply)(params, jnp.array([True, False]))
    with pytest.raises(ValueError, match=r"expected W of shape \(10, 4\), got \(4, 10\)"):
        layer.apply({"W": params["W"].T}, jnp.array([1]))
    with pytest.raises(ValueError, match=r"unexpected params keys \['b'\]; expected "
                                         r"\{'W': \(num_embeddings, features\)\}"):
        layer.apply({**params, "b": jnp.zeros(4)}, jnp.array([1]))
    with pytest.raises(TypeError, match=r"expected params .*got tuple"):
        layer.apply((), jnp.array([1]))
    with pytest.raises(TypeError, match=r"input_shape must be a tuple of ints"):
        layer.init(key, 3)
    with pytest.raises(TypeError, match=r"expected a PRNG key"):
        layer.init(None, (3,))
