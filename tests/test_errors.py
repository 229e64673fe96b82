"""One error type: every lamina error is an lm.LaminaError and the built-in it was."""

import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lamina as lm


def _raised(call):
    with pytest.raises(Exception) as info:
        call()
    return info.value


def test_a_shape_error_deep_in_a_model_carries_path_and_layer(key):
    model = lm.serial(lm.Dense(4), lm.residual(lm.serial(lm.Dense(4), lm.Dense(3))))
    error = _raised(lambda: model.init(key, (2,)))
    assert isinstance(error, lm.LaminaError) and isinstance(error, ValueError)
    assert error.path == "serial[1]" and error.layer == "residual(serial(Dense(4), Dense(3)))"
    assert str(error).startswith("serial[1] residual(serial(Dense(4), Dense(3))): x + f(x)")

    _, params = lm.mlp([4, 2]).init(key, (3,))
    error = _raised(lambda: lm.mlp([4, 2]).apply(params, jnp.ones(5)))
    assert (error.path, error.layer) == ("serial[0]", "Dense(4, relu)")
    assert error.message.startswith("expected input with last dimension 3")
    assert str(error) == f"serial[0] Dense(4, relu): {error.message}"


@pytest.mark.parametrize("call, builtin", [
    (lambda: lm.Dense(0), ValueError),
    (lambda: lm.Dense("3"), TypeError),
    (lambda: lm.serial(lm.Dense), TypeError),
    (lambda: lm.Dense(2).init(jax.random.key(0), 3), TypeError),
    (lambda: lm.accuracy(jnp.ones((3, 2)), jnp.ones(4)), ValueError),
    (lambda: lm.load("/nonexistent/folder/x.safetensors"), FileNotFoundError),
    (lambda: lm.save("/nonexistent/folder/x.safetensors", {"W": jnp.ones(2)}), FileNotFoundError),
    (lambda: lm.check_params(lm.Dense(2), {"W": jnp.ones((3, 2))}, (2,)), ValueError),
    (lambda: lm.initializers.torch_bias(0), ValueError),
    (lambda: lm.testing.check_layer(lm.Dense(2), 3), TypeError),
])
def test_every_error_is_a_lamina_error_and_its_builtin(call, builtin):
    error = _raised(call)
    assert isinstance(error, builtin), type(error)
    assert isinstance(error, lm.LaminaError), type(error)


def test_fit_divergence_is_a_lamina_floating_point_error(key):
    xs = np.ones((8, 2), np.float32)
    model = lm.Dense(1)
    _, params = model.init(key, (2,))
    error = _raised(lambda: lm.fit(model, params, optax.sgd(1e30), (xs, xs[:, :1] * 1e30),
                                   loss_fn=optax.squared_error, epochs=3, batch_size=4,
                                   key=key, progress=False))
    assert isinstance(error, FloatingPointError) and isinstance(error, lm.LaminaError)


def test_existing_except_clauses_keep_working(key):
    try:
        lm.Dense(3).apply({"W": jnp.ones((3, 2)), "b": jnp.ones(3)}, jnp.ones(4))
    except ValueError as error:
        assert "expected input with last dimension 2" in str(error)
    else:
        raise AssertionError("no error")


def test_lamina_errors_pickle_with_their_path():
    error = _raised(lambda: lm.serial(lm.Dense(2), lm.Dense(0 + 1)).apply(
        ({"W": jnp.ones((2, 3)), "b": jnp.ones(2)}, {"W": jnp.ones((1, 5)), "b": jnp.ones(1)}),
        jnp.ones(3)))
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == str(error)
    assert (again.path, again.layer, again.message) == (error.path, error.layer, error.message)


def test_a_user_layers_own_error_keeps_its_type_and_gets_a_note(key):
    def apply(params, x, *, key=None):
        raise KeyError("mine")  # not a ValueError/TypeError: passes through untouched

    def bad_apply(params, x, *, key=None):
        return jnp.ones((2, 3)) @ x  # JAX's own TypeError

    model = lm.serial(lm.Dense(4), lm.Layer(lambda k, s: ((2,), ()), bad_apply, "Mine"))
    _, params = model.init(key, (2,))
    error = _raised(lambda: model.apply(params, jnp.ones(2)))
    assert type(error) is TypeError and not isinstance(error, lm.LaminaError)
    if sys.version_info >= (3, 11):
        assert "(raised inside lamina layer serial[1] Mine)" in error.__notes__
    other = lm.serial(lm.Layer(lambda k, s: (s, ()), apply, "KeyErr"))
    assert type(_raised(lambda: other.apply(((),), jnp.ones(2)))) is KeyError


@pytest.mark.parametrize("bad_key", [0, 1.5, "seed", jnp.ones(3)])
def test_a_bad_key_through_any_combinator_names_the_layer(key, bad_key):
    for model in (lm.serial(lm.Dense(2), lm.Dropout(0.5)),
                  lm.parallel(lm.Dense(2), lm.Dropout(0.5)),
                  lm.residual(lm.Dropout(0.5))):
        _, params = model.init(key, (2,))
        error = _raised(lambda: model.apply(params, jnp.ones(2), key=bad_key))
        assert isinstance(error, lm.LaminaError) and isinstance(error, TypeError)
        assert "expected a PRNG key such as jax.random.key(0)" in str(error)
        assert "invalid PRNG key data" not in str(error)
