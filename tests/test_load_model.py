"""lm.save(..., model=) records the model as JSON; lm.load_model rebuilds it."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

import lamina as lm

MODELS = [
    lm.mlp([16, 8, 3], final_act="log_softmax"),
    lm.serial(lm.Dense(6, act="gelu", use_bias=False), lm.LayerNorm(eps=1e-3),
              lm.residual(lm.serial(lm.Dense(6, act="tanh"), lm.Dropout(0.1), lm.Dense(6))),
              lm.parallel(lm.Dense(2), lm.serial(lm.Dense(3), lm.Sigmoid())), lm.Concat(),
              lm.Activation("softmax")),
    lm.with_dtype(lm.serial(lm.Dense(5, w_init=lm.initializers.he_normal(),
                                     b_init=lm.initializers.constant(0.1),
                                     dtype=jnp.bfloat16), lm.Relu(), lm.Dense(2)),
                  compute=jnp.float16),
    lm.serial(lm.Flatten(), lm.Identity(), lm.Dense(2, param_dtype=jnp.bfloat16)),
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name[:40])
def test_round_trip_gives_an_equal_model_and_bit_identical_outputs(model, key, tmp_path):
    shape = (2, 3) if isinstance(model.layers[0] if hasattr(model, "layers") else None,
                                 lm.Flatten) else (4,)
    _, params = model.init(key, shape)
    path = tmp_path / "model.safetensors"
    lm.save(path, params, model=model, metadata={"note": "kept"})
    rebuilt, loaded = lm.load_model(path)
    assert rebuilt == model and repr(rebuilt) == repr(model)
    xs = jax.random.normal(jax.random.key(1), (7,) + shape)
    np.testing.assert_array_equal(np.asarray(lm.forward(rebuilt)(loaded, xs), np.float32),
                                  np.asarray(lm.forward(model)(params, xs), np.float32))
    assert lm.load_metadata(path)["note"] == "kept"


def test_the_file_holds_configuration_not_code(key, tmp_path):
    model = lm.mlp([4, 2])
    _, params = model.init(key, (3,))
    lm.save(tmp_path / "m.safetensors", params, model=model)
    described = json.loads(lm.load_metadata(tmp_path / "m.safetensors")["lamina.model"])
    assert described == {"format": 2, "model": {"layer": "serial", "config": {"layers": {"tuple": [
        {"layer": "Dense", "config": {"out_features": 4, "act": "relu", "use_bias": True,
                                      "w_init": None, "b_init": None, "dtype": None,
                                      "param_dtype": {"dtype": "float32"}}},
        {"layer": "Dense", "config": {"out_features": 2, "act": None, "use_bias": True,
                                      "w_init": None, "b_init": None, "dtype": None,
                                      "param_dtype": {"dtype": "float32"}}},
    ]}}}}


def _user_layer():
    return lm.Layer(lambda k, s: (s, ()), lambda p, x, *, key=None: x, "Mine")


@pytest.mark.parametrize("model, pattern", [
    (lm.serial(lm.Dense(3), lm.residual(_user_layer())),
     r"serial\[1\]\.residual\[0\] Mine: save\('.*'\): this is a user-defined lm.Layer"),
    (lm.serial(lm.Dense(3, act=lambda v: v * 2)),
     r"serial\[0\] Dense\(3, <lambda>\): .*act=.* is a function, .*activation name"),
    (lm.parallel(lm.Dense(2), lm.Dense(3, w_init=jax.nn.initializers.he_normal())),
     r"parallel\[1\] Dense\(3\): .*w_init=.* is a function, .*one of lm.initializers"),
])
def test_a_model_lamina_cannot_rebuild_is_refused_before_anything_is_written(
        model, pattern, key, tmp_path):
    path = tmp_path / "model.safetensors"
    lm.save(path, {"W": jnp.ones(2)})
    before = path.read_bytes()
    with pytest.raises(TypeError, match=pattern) as info:
        lm.save(path, {"W": jnp.zeros(2)}, model=model)
    assert isinstance(info.value, lm.LaminaError)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.safetensors"]


def test_a_file_without_a_model_says_how_to_load_it(key, tmp_path):
    lm.save(tmp_path / "p.safetensors", {"W": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"load_model\('.*p.safetensors'\): the file holds no "
                                         r"model description: it was saved without model="):
        lm.load_model(tmp_path / "p.safetensors")


@pytest.mark.parametrize("description, pattern", [
    ("not json", r"corrupted model description"),
    (json.dumps({"format": 3, "model": {}}), r"format 3; this lamina reads formats 1 and 2"),
    (json.dumps({"format": 1, "model": {"layer": "os.system", "config": {}}}),
     r"names layer 'os.system', which this lamina does not have"),
    (json.dumps({"format": 1, "model": {"layer": "save", "config": {}}}),
     r"names layer 'save', which this lamina does not have"),
    (json.dumps({"format": 1, "model": {"layer": "Dense", "config": {
        "out_features": 2, "w_init": {"initializer": "init_weight", "config": {}}}}}),
     r"names initializer 'init_weight'"),
])
def test_a_bad_model_description_names_the_file(description, pattern, tmp_path):
    path = tmp_path / "bad.safetensors"
    metadata = {"lamina.version": lm.__version__, "lamina.format": "1",
                "lamina.tree": json.dumps({"dict": {"W": {"tensor": "W"}}}),
                "lamina.model": description}
    path.write_bytes(safetensors.numpy.save({"W": np.ones(2, np.float32)}, metadata=metadata))
    with pytest.raises(ValueError, match=r"load_model\('.*bad.safetensors'\): .*" + pattern):
        lm.load_model(path)
