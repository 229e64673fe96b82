"""The Layer type and the error helpers every layer shares."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lamina as lm


def user_layer():
    # A layer written by a user with no shape checks of its own.
    def init(key, input_shape):
        return (3,), {"M": jnp.ones((3, 5))}

    def apply(params, x, *, key=None):
        return params["M"] @ x

    return lm.Layer(init, apply, "MyLayer")


def test_user_layer_composes(key):
    model = lm.serial(lm.Dense(5), user_layer())
    out_shape, params = model.init(key, (2,))
    assert out_shape == (3,)
    x = jnp.array([1.0, 2.0])
    h = np.asarray(params[0]["W"]) @ np.asarray(x) + np.asarray(params[0]["b"])
    np.testing.assert_allclose(model.apply(params, x), np.ones((3, 5)) @ h, rtol=1e-5)


def test_foreign_error_gets_a_note_naming_the_layer(key):
    model = lm.serial(lm.Dense(4), user_layer())
    _, params = model.init(key, (2,))
    with pytest.raises(TypeError) as info:
        model.apply(params, jnp.ones(2))
    assert "dot_general" in str(info.value)  # JAX's own words are kept...
    if sys.version_info >= (3, 11):  # ...and placed, where exceptions take notes
        assert "(raised inside lamina layer serial[1] MyLayer)" in info.value.__notes__
    else:
        assert not hasattr(info.value, "__notes__")


def test_legacy_uint32_keys_are_accepted():
    out_shape, params = lm.Dense(2).init(jax.random.PRNGKey(0), (3,))
    assert params["W"].shape == (2, 3)


@pytest.mark.parametrize("bad", [0, np.float32(1.0), jnp.ones(3), "seed"])
def test_bad_keys(bad):
    with pytest.raises(TypeError, match=r"serial\(Dense\(2\)\): expected a PRNG key such as jax.random.key\(0\), got"):
        lm.serial(lm.Dense(2)).init(bad, (3,))
