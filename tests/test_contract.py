"""The one layer contract: one internal signature, declared params, derived or verified capabilities.

Each of the three silent failures the old contract allowed has a test here:
a layer that uses a key but did not say so got none from lm.forward; a
layer that wrongly claimed batch_polymorphic passed check_layer and then
mixed examples; and with_dtype around a model with state lost its state.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lamina as lm
from lamina._src.core.builtin import Builtin
from lamina._src.core.fields import Positive
from lamina._src.core.spec import Param
from lamina._src.layers import initializers


class Noise(Builtin):
    """A new layer that adds noise from its key and says nothing about keys."""

    scale: Positive = 1.0

    def forward(self, params, state, x, *, key, train):
        if key is None:
            return x, state
        return x + self.scale * jax.random.normal(key, jnp.shape(x)), state


class QuietNoise(Noise):
    """The same, wrongly saying it never uses a key."""

    stochastic = False


@pytest.mark.slow
def test_a_new_layer_that_uses_its_key_gets_one_from_forward_and_the_train_step():
    model = lm.serial(lm.Dense(3), Noise(0.5))
    _, params = model.init(jax.random.key(0), (2,))
    xs = jnp.ones((4, 2))
    fwd = lm.forward(model)
    clean = fwd(params, xs)
    noisy = fwd(params, xs, key=jax.random.key(1))
    assert not np.allclose(noisy, clean)
    # Each example its own noise: the rows differ although the inputs are equal.
    assert not np.allclose(noisy[0], noisy[1])
    step = lm.train_step(model, optax.squared_error, optax.sgd(0.0), donate=False)
    batch = (xs, jnp.zeros((4, 3)))
    loss_noisy = step(params, optax.sgd(0.0).init(params), batch, key=jax.random.key(1))[2]
    loss_clean = step(params, optax.sgd(0.0).init(params), batch)[2]
    assert float(loss_noisy["loss"]) != float(loss_clean["loss"])


@pytest.mark.slow
def test_a_layer_that_wrongly_says_it_never_uses_a_key_fails_check_layer():
    lm.testing.check_layer(Noise(0.5), (6,))  # the default, True, is right for it
    with pytest.raises(lm.testing.LayerCheckError, match=r"'deterministic'.*stochastic is False"):
        lm.testing.check_layer(QuietNoise(0.5), (6,))
    # and a built-in layer that says it uses a key but never does is caught too
    with pytest.raises(lm.testing.LayerCheckError, match=r"stochastic is True"):
        lm.testing.check_layer(type("Still", (Noise,), {"forward": _identity})(), (6,))


def _identity(self, params, state, x, *, key, train):
    return x, state


class CenterFeatures(Builtin):
    """Subtracts the mean over axis 0: of the features for one example, of the batch for a batch.

    It wrongly says it computes each example alone along leading axes.
    """

    stochastic = False
    batch_polymorphic = True
    min_rank = 1

    def forward(self, params, state, x, *, key, train):
        return x - jnp.mean(x, axis=0, keepdims=True), state


def test_a_wrong_batch_polymorphic_claim_fails_check_layer():
    with pytest.raises(lm.testing.LayerCheckError,
                       match=r"'vmap' check: .*says batch_polymorphic.*examples would mix"):
        lm.testing.check_layer(CenterFeatures(), (4,))
    # Without the claim the layer is vmapped, and forward keeps examples apart.
    honest = type("Honest", (CenterFeatures,), {"batch_polymorphic": False})()
    lm.testing.check_layer(honest, (4,))
    xs = jnp.arange(8.0).reshape(2, 4)
    np.testing.assert_allclose(lm.forward(honest)((), xs), xs - xs.mean(axis=1, keepdims=True))


def test_with_dtype_around_a_model_with_state_keeps_its_state():
    inner = lm.serial(lm.Dense(4), lm.BatchNorm())
    model = lm.with_dtype(inner, jnp.float32)
    assert lm.has_state(model) and model.stateful
    _, params = model.init(jax.random.key(0), (3,))
    state = lm.init_state(model, (3,))
    assert jax.tree.structure(state) == jax.tree.structure(lm.init_state(inner, (3,)))
    xs = jax.random.normal(jax.random.key(1), (8, 3))
    ys, new = lm.forward(model)(params, xs, state=state, train=True)
    # The running mean moved towards the batch's, as BatchNorm's own update says.
    h = np.asarray(xs) @ np.asarray(params[0]["W"]).T + np.asarray(params[0]["b"])
    np.testing.assert_allclose(new[1]["running_mean"], 0.1 * h.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert int(new[1]["num_batches_tracked"]) == 1
    with pytest.raises(ValueError, match=r"BatchNorm\(\): this layer has state"):
        model.apply(params, xs[0])
    lm.testing.check_layer(model, (3,))


class Scale(Builtin):
    """A declared layer: one param, its torch name, the input axis it fits."""

    stochastic = False
    batch_polymorphic = True
    min_rank = 1

    def params_spec(self):
        return {"s": Param(lambda s: (s[-1],), initializers.constant(2.0), "weight", "(d,)",
                           fits={0: -1})}

    def forward(self, params, state, x, *, key, train):
        return x * jnp.broadcast_to(params["s"], x.shape), state


def test_init_checks_and_torch_names_come_from_the_declaration():
    layer = Scale()
    out, params = layer.init(jax.random.key(0), (3, 5))
    assert out == (3, 5) and params["s"].shape == (5,)
    np.testing.assert_array_equal(params["s"], np.full(5, 2.0))
    assert layer.torch_names == {"s": "weight"}
    exported = lm.to_torch(params, model=layer)
    assert list(exported) == ["weight"] and np.array_equal(exported["weight"], params["s"])
    lm.check_params(layer, params, (3, 5))
    with pytest.raises(ValueError, match=r"Scale\(\): expected input with last dimension 5 "
                                         r"\(s has shape \(5,\)\), got x with shape \(4,\)"):
        layer.apply(params, jnp.ones(4))
    with pytest.raises(ValueError, match=r"Scale\(\): expected params \{'s': \(d,\)\}, "
                                         r"got a dict with keys \['t'\]"):
        layer.apply({"t": params["s"]}, jnp.ones(5))
    with pytest.raises(TypeError, match=r"Scale\(\): expected params \{'s': \(d,\)\}, got tuple"):
        layer.apply((), jnp.ones(5))
    lm.testing.check_layer(layer, (2, 5))


def test_fields_check_themselves_by_their_type():
    assert Noise(1).scale == 1.0 and isinstance(Noise(1).scale, float)
    with pytest.raises(ValueError, match=r"^Noise: scale must be > 0, got 0"):
        Noise(0)
    with pytest.raises(TypeError, match=r"^Noise: scale must be a number > 0, got 'big'"):
        Noise("big")
    assert dataclasses.is_dataclass(Noise) and Noise(2.0) == Noise(2) and hash(Noise(2.0)) == hash(
        Noise(2))


def test_a_layer_without_params_refuses_params():
    # Params from another model at a parameterless layer's place are not ignored.
    model = lm.serial(lm.Dense(3), lm.Relu(), lm.Dense(2))
    other = lm.serial(lm.Dense(3), lm.Dense(3), lm.Dense(2))
    _, params = other.init(jax.random.key(0), (4,))
    with pytest.raises(ValueError, match=r"serial\[1\] Activation\(relu\): this layer has no "
                                         r"params, but got a dict with keys \['W', 'b'\]"):
        model.apply(params, jnp.ones(4))
    with pytest.raises(ValueError, match=r"this layer has no params"):
        lm.forward(model)(params, jnp.ones((2, 4)))
