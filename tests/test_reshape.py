import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lamina as lm


def test_flatten(key):
    out_shape, params = lm.Flatten().init(key, (2, 3, 4))
    assert out_shape == (24,) and params == ()
    x = jnp.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(lm.Flatten().apply((), x), np.arange(24.0))
    xs = jnp.stack([x, -x])
    np.testing.assert_array_equal(jax.vmap(lm.Flatten().apply, in_axes=(None, 0))((), xs), np.stack([np.arange(24.0), -np.arange(24.0)]))


def test_flatten_then_dense_infers_size(key):
    out_shape, params = lm.serial(lm.Flatten(), lm.Dense(3)).init(key, (8, 8))
    assert out_shape == (3,) and params[1]["W"].shape == (3, 64)


def test_identity(key):
    assert lm.Identity().init(key, (5,)) == ((5,), ())
    x = jnp.arange(5.0)
    np.testing.assert_array_equal(jax.jit(lm.Identity().apply)((), x), x)


def test_flatten_scalar_error():
    with pytest.raises(ValueError, match=r"Flatten\(\): expected an array with at least one axis"):
        lm.Flatten().apply((), jnp.float32(1.0))
