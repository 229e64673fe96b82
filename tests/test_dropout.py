"""Dropout: identity without a key, inverted dropout with one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lamina as lm


def test_identity_without_key():
    x = jnp.arange(1.0, 11.0)
    np.testing.assert_array_equal(lm.Dropout(0.5).apply((), x), x)


def test_inverted_dropout_statistics():
    x = jnp.ones(200_000)
    y = np.asarray(lm.Dropout(0.3).apply((), x, key=jax.random.key(7)))
    kept = y != 0
    np.testing.assert_allclose(kept.mean(), 0.7, atol=0.005)
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    np.testing.assert_allclose(y.mean(), 1.0, atol=0.01)


def test_same_key_same_mask_and_serial_splits_keys():
    model = lm.serial(lm.Dropout(0.5), lm.Dropout(0.5))
    x = jnp.ones(1000)
    a = model.apply(((), ()), x, key=jax.random.key(1))
    b = model.apply(((), ()), x, key=jax.random.key(1))
    c = model.apply(((), ()), x, key=jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Each layer gets its own key: the two masks are not the same mask.
    k0, k1 = jax.random.split(jax.random.key(1))
    m0 = np.asarray(lm.Dropout(0.5).apply((), x, key=k0)) != 0
    m1 = np.asarray(lm.Dropout(0.5).apply((), x, key=k1)) != 0
    np.testing.assert_array_equal(np.asarray(a) != 0, m0 & m1)
    assert not np.array_equal(m0, m1)


def test_forward_gives_each_example_its_own_mask():
    fwd = lm.forward(lm.Dropout(0.5))
    y = np.asarray(fwd((), jnp.ones((2, 1000)), key=jax.random.key(0)))
    assert not np.array_equal(y[0] != 0, y[1] != 0)


@pytest.mark.parametrize("rate", [1.0, 1.5, -0.1])
def test_bad_rate(rate):
    with pytest.raises(ValueError, match=rf"Dropout: rate must be in \[0, 1\), got {rate}"):
        lm.Dropout(rate)


def test_bad_key():
    with pytest.raises(TypeError, match=r"Dropout\(0.5\): expected a PRNG key.*got int 3"):
        lm.Dropout(0.5).apply((), jnp.ones(3), key=3)
