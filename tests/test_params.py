"""param_shapes (no allocation) and check_params (names the first differing path)."""

import time

import jax
import jax.numpy as jnp
import pytest

import lamina as lm


def test_param_shapes_of_ten_billion_parameters_is_instant():
    model = lm.mlp([100_000] * 2 + [10])
    start = time.perf_counter()
    out_shape, shapes = lm.param_shapes(model, (50_000,))
    elapsed = time.perf_counter() - start
    assert out_shape == (10,)
    assert shapes[0]["W"] == jax.ShapeDtypeStruct((100_000, 50_000), jnp.float32)
    assert shapes[1]["W"].shape == (100_000, 100_000)
    assert shapes[2]["b"].shape == (10,)
    total = sum(leaf.size for leaf in jax.tree.leaves(shapes))
    assert total == 100_000 * 50_000 + 100_000 + 100_000**2 + 100_000 + 10 * 100_000 + 10
    assert total > 1e10
    assert elapsed < 5.0  # generous; a real init would need 60 GB


def test_eval_shape_of_init_works(key):
    shapes = jax.eval_shape(lambda k: lm.mlp([256, 10]).init(k, (784,))[1], key)
    assert shapes[0]["W"].shape == (256, 784)


def test_check_params_accepts_matching_tree(key):
    model = lm.serial(lm.Dense(4), lm.LayerNorm(), lm.Dense(2, use_bias=False))
    _, params = model.init(key, (3,))
    assert lm.check_params(model, params, (3,)) is None


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda p: p[:2], r"serial\(.*\): params do not fit the model at '\(root\)': expected a tuple of length 3, got a tuple of length 2"),
        (lambda p: (p[0], p[1], {"W": p[2]["W"].T, "b": p[2]["b"]}), r"serial\[2\] Dense\(2\): params do not fit the model at '2.W': expected shape \(2, 4\), got \(4, 2\) \(transposed\?"),
        (lambda p: (p[0], {"scale": p[1]["scale"]}, p[2]), r"serial\[1\] LayerNorm\(\): params do not fit the model at '1.offset': missing"),
        (lambda p: (p[0], p[1], {**p[2], "c": 1}), r"serial\[2\] Dense\(2\): params do not fit the model at '2.c': unexpected key"),
        (lambda p: (p[0], p[1], {"W": p[2]["W"], "b": jnp.ones(3)}), r"at '2.b': expected shape \(2,\), got \(3,\)"),
        (lambda p: (p[0], p[1], [p[2]["W"]]), r"at '2': expected a dict with keys \['W', 'b'\], got a list of length 1"),
    ],
)
def test_check_params_names_first_difference(key, mutate, pattern):
    model = lm.serial(lm.Dense(4), lm.LayerNorm(), lm.Dense(2))
    _, params = model.init(key, (3,))
    with pytest.raises(ValueError, match=pattern):
        lm.check_params(model, mutate(params), (3,))


def test_check_params_nested_path(key):
    model = lm.serial(lm.Dense(4), lm.residual(lm.mlp([4, 4])))
    _, params = model.init(key, (4,))
    bad = (params[0], ((params[1][0][0], {"W": jnp.ones((4, 5)), "b": params[1][0][1]["b"]}),))
    with pytest.raises(ValueError, match=r"^serial\[1\].residual\[0\].serial\[1\] Dense\(4\): params do not fit the model at '1.0.1.W'"):
        lm.check_params(model, bad, (4,))
