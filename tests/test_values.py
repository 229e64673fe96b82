"""Layers are values of their configuration: equality, hashing, pickle, repr, surgery."""

import dataclasses
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lamina as lm

EVERY_BUILTIN = [
    lm.Dense(3),
    lm.Dense(3, act="relu", use_bias=False, w_init=lm.initializers.he_normal(),
             b_init=lm.initializers.zeros, dtype=jnp.bfloat16, param_dtype=jnp.float16),
    lm.Activation("gelu"),
    lm.Relu(), lm.Sigmoid(), lm.Tanh(), lm.Softmax(), lm.LogSoftmax(),
    lm.LayerNorm(), lm.LayerNorm(eps=1e-3),
    lm.Dropout(0.25),
    lm.Flatten(), lm.Identity(), lm.Concat(axis=0),
    lm.mlp([8, 4, 2]),
    lm.serial(lm.Dense(4), lm.residual(lm.serial(lm.LayerNorm(), lm.Dense(4)))),
    lm.serial(lm.parallel(lm.Dense(2), lm.Identity()), lm.Concat()),
    lm.with_dtype(lm.mlp([4, 2]), compute=jnp.float16),
]


def _rebuild(layer):
    """The same configuration, built again from scratch (a new object)."""
    return pickle.loads(pickle.dumps(layer))


@pytest.mark.parametrize("layer", EVERY_BUILTIN, ids=repr)
def test_pickle_round_trips_to_an_equal_layer_with_the_same_hash(layer):
    again = _rebuild(layer)
    assert again is not layer
    assert again == layer and hash(again) == hash(layer)
    assert repr(again) == repr(layer)


def test_equal_configuration_is_equal():
    assert lm.Dense(3) == lm.Dense(3) and hash(lm.Dense(3)) == hash(lm.Dense(3))
    assert lm.mlp([4, 2]) == lm.mlp([4, 2]) and hash(lm.mlp([4, 2])) == hash(lm.mlp([4, 2]))
    assert lm.Dense(3) != lm.Dense(4)
    assert lm.Dense(3) != lm.Dense(3, act="relu")
    # A named activation given as its function is stored by name.
    assert lm.Dense(3, act=jax.nn.relu) == lm.Dense(3, act="relu")
    assert lm.Dense(3, dtype="bfloat16") == lm.Dense(3, dtype=jnp.bfloat16)
    # Same children, different combinator.
    assert lm.serial(lm.Dense(2), lm.Dense(2)) != lm.parallel(lm.Dense(2), lm.Dense(2))
    assert lm.Dropout(0.5) == lm.Dropout(1 / 2)
    assert len({lm.mlp([4, 2]), lm.mlp([4, 2]), lm.mlp([4, 3])}) == 2


def test_repr_is_the_configuration():
    assert repr(lm.serial(lm.Dense(256, act="relu"), lm.Dense(10))) == (
        "serial(Dense(256, act='relu'), Dense(10))"
    )
    assert repr(lm.residual(lm.LayerNorm(eps=1e-3))) == "residual(LayerNorm(eps=0.001))"
    assert repr(lm.Dense(4, use_bias=False, dtype=jnp.bfloat16)) == (
        "Dense(4, use_bias=False, dtype='bfloat16')"
    )
    # The name errors and traces use stays short.
    assert lm.Dense(256, act="relu").name == "Dense(256, relu)"


def test_combinators_expose_their_children():
    a, b = lm.Dense(4, act="relu"), lm.Dense(2)
    assert lm.serial(a, b).layers == (a, b)
    assert lm.parallel(a, b).layers == (a, b)
    assert lm.residual(a).layer == a
    assert lm.with_dtype(b, jnp.bfloat16).model == b
    assert lm.mlp([4, 2]).layers == (a, b)


def test_surgery_is_one_line(key):
    model = lm.mlp([8, 8, 3])
    wider = model.replace(layers=model.layers[:-1] + (lm.Dense(5),))
    assert wider == lm.mlp([8, 8, 5])
    assert dataclasses.replace(lm.Dense(3), act="tanh") == lm.Dense(3, act="tanh")
    assert lm.Dropout(0.1).replace(rate=0.2) == lm.Dropout(0.2)
    assert wider.init(key, (4,))[0] == (5,)
    assert model == lm.mlp([8, 8, 3])  # the original is unchanged
    with pytest.raises(lm.LaminaError, match=r"replace\(\) got unknown field\(s\) \['width'\]"):
        lm.Dense(3).replace(width=4)


def test_layers_are_immutable():
    layer = lm.Dense(3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.out_features = 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        lm.Layer(lambda k, s: (s, ()), lambda p, x, *, key=None: x, "Mine").name = "Other"


def test_invalid_configuration_is_refused_at_construction():
    with pytest.raises(lm.LaminaError, match=r"Dense: out_features must be >= 1, got 0"):
        lm.Dense(0)
    with pytest.raises(ValueError, match=r"unknown activation 'relux'"):
        lm.Dense(3, act="relux")


def _count_compiles():
    compiles = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    return compiles, listen


def _stop(listen):
    # Public since jax 0.7; older releases keep it private.
    unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None) or (
        jax._src.monitoring._unregister_event_duration_listener_by_callback)
    unregister(listen)


def test_equal_models_share_one_compile(key):
    # Two models built separately but equal: lm.forward compiles once for both.
    xs = jnp.ones((5, 6))
    model = lm.serial(lm.Dense(7, act="relu"), lm.Dense(3, act="tanh"), lm.Dense(2))
    _, params = model.init(key, (6,))
    compiles, listen = _count_compiles()
    try:
        first = lm.forward(model)(params, xs)
        after_first = len(compiles)
        again = lm.serial(lm.Dense(7, act="relu"), lm.Dense(3, act="tanh"), lm.Dense(2))
        second = lm.forward(again)(params, xs)
        after_second = len(compiles)
        lm.forward(lm.serial(lm.Dense(7, act="relu"), lm.Dense(3), lm.Dense(2)))(params, xs)
        after_other = len(compiles)
    finally:
        _stop(listen)
    assert after_first >= 1
    assert after_second == after_first  # no second compile for an equal model
    assert after_other > after_second  # ...while a different model does compile
    np.testing.assert_array_equal(first, second)


def test_equal_models_share_one_compile_as_a_static_argument(key):
    run = jax.jit(lambda params, x, model: model.apply(params, x), static_argnums=2)
    _, params = lm.mlp([4, 2]).init(key, (3,))
    compiles, listen = _count_compiles()
    try:
        run(params, jnp.ones(3), lm.mlp([4, 2]))
        first = len(compiles)
        run(params, jnp.ones(3), lm.mlp([4, 2]))
    finally:
        _stop(listen)
    assert first >= 1 and len(compiles) == first


def test_user_layer_is_still_the_protocol(key, tmp_path):
    def init(key, shape):
        return shape, {"s": jnp.full(shape[-1:], 2.0, jnp.float32)}

    def apply(params, x, *, key=None):
        return x * params["s"]

    scale = lm.Layer(init, apply, "Scale")
    model = lm.serial(lm.Dense(4), scale, lm.Dense(2))
    _, params = model.init(key, (3,))
    x = jnp.array([1.0, -2.0, 0.5])
    h = np.asarray(params[0]["W"]) @ np.asarray(x) + np.asarray(params[0]["b"])
    want = np.asarray(params[2]["W"]) @ (2 * h) + np.asarray(params[2]["b"])
    np.testing.assert_allclose(model.apply(params, x), want, rtol=1e-5)
    np.testing.assert_allclose(lm.forward(model)(params, x[None]), want[None], rtol=1e-5)
    assert [s.layer for s in lm.trace(model, params, x)] == list(model.layers)
    assert lm.summary(model, (3,), show=False).params == 4 * 3 + 4 + 4 + 2 * 4 + 2
    assert "Scale" in lm.visualize(model, params, x)
    lm.testing.check_layer(model, (3,))
    lm.save(tmp_path / "p.safetensors", params)
    np.testing.assert_array_equal(lm.load(tmp_path / "p.safetensors", like=(model, (3,)))[1]["s"], 2.0)


@pytest.mark.slow
def test_import_lamina_loads_neither_chex_nor_jax_test_util():
    code = ("import sys, lamina; "
            "print(sorted(m for m in ('chex', 'jax.test_util', 'lamina.testing') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_modules_are_not_shadowed_by_functions():
    # lm.summary and friends are the functions; the code lives in lamina._src.
    import lamina._src.inspection.summary

    for name in ("dense", "forward", "summary", "visualize", "export"):
        assert callable(getattr(lm, name)) and not hasattr(getattr(lm, name), "__path__")
    assert lamina._src.inspection.summary.summary is lm.summary
