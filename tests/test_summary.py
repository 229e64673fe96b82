"""summary: parameter counts, FLOPs and memory against hand-computed numbers."""

import time

import jax
import jax.numpy as jnp
import pytest

import lamina as lm
from lamina import Summary, SummaryRow, summary


def test_mlp_784_256_10_by_hand(capsys):
    result = summary(lm.mlp([256, 10]), (784,))
    assert isinstance(result, Summary)
    assert result.rows == (
        SummaryRow("serial[0]", "Dense(256, relu)", (256,), 784 * 256 + 256, 2 * 784 * 256 + 256),
        SummaryRow("serial[1]", "Dense(10)", (10,), 256 * 10 + 10, 2 * 256 * 10 + 10),
    )
    assert result.params == 203_530
    assert result.flops == 401_664 + 5_130
    assert result.param_bytes == 4 * 203_530
    assert (result.input_shape, result.output_shape) == ((784,), (10,))
    printed = capsys.readouterr().out
    assert printed == str(result) + "\n"
    lines = printed.splitlines()
    assert lines[0] == "serial(Dense(256, relu), Dense(10)) on inputs of shape (784,)"
    assert lines[1].split() == ["path", "layer", "output", "params", "FLOPs"]
    assert lines[3].split() == ["serial[0]", "Dense(256,", "relu)", "(256,)", "200,960", "401,664"]
    assert lines[6].split() == ["total", "(10,)", "203,530", "406,794"]
    assert "parameter memory: 814,120 bytes (795.0 KiB)" in lines[7]


def test_show_false_prints_nothing(capsys):
    summary(lm.mlp([4, 2]), (3,), show=False)
    assert capsys.readouterr().out == ""


def test_bias_free_and_bfloat16():
    result = summary(lm.Dense(10, use_bias=False, param_dtype=jnp.bfloat16), (784,), show=False)
    assert result.rows == (SummaryRow("", "Dense(10)", (10,), 7840, 2 * 784 * 10),)
    assert result.param_bytes == 2 * 7840
    assert "(root)" in str(result)


def test_nested_combinators_count_each_parameter_once():
    model = lm.serial(
        lm.Dense(8, use_bias=False),
        lm.residual(lm.serial(lm.LayerNorm(), lm.Dense(8, act="relu"))),
        lm.parallel(lm.Dense(3), lm.Relu()),
        lm.Concat(),
    )
    result = summary(model, (5,), show=False)
    rows = [(r.path, r.output_shape, r.params, r.flops) for r in result.rows]
    assert rows == [
        ("serial[0]", (8,), 5 * 8, 2 * 5 * 8),
        ("serial[1].residual[0].serial[0]", (8,), 2 * 8, 7 * 8),  # LayerNorm: 7 per element
        ("serial[1].residual[0].serial[1]", (8,), 8 * 8 + 8, 2 * 8 * 8 + 8),
        ("serial[1]", (8,), 0, 8),  # the residual add; its children hold the params
        ("serial[2].parallel[0]", (3,), 8 * 3 + 3, 2 * 8 * 3 + 3),
        ("serial[2].parallel[1]", (8,), 0, 0),  # activations count 0
        ("serial[2]", ((3,), (8,)), 0, 0),
        ("serial[3]", (11,), 0, 0),
    ]
    assert result.params == 40 + 16 + 72 + 27 == sum(r.params for r in result.rows)
    assert result.flops == 80 + 56 + 136 + 8 + 51
    assert result.param_bytes == 4 * 155
    assert result.output_shape == (11,)


def test_leading_axes_and_flatten():
    result = summary(lm.serial(lm.Dense(4), lm.Flatten(), lm.Dense(2)), (3, 5), show=False)
    assert [(r.output_shape, r.params, r.flops) for r in result.rows] == [
        ((3, 4), 5 * 4 + 4, 3 * (2 * 5 * 4 + 4)),
        ((12,), 0, 0),
        ((2,), 12 * 2 + 2, 2 * 12 * 2 + 2),
    ]


def test_huge_model_is_summarised_without_allocating():
    start = time.perf_counter()
    result = summary(lm.mlp([100_000, 100_000, 10]), (50_000,), show=False)
    assert time.perf_counter() - start < 5.0  # a real init would need 60 GB
    assert result.params == 50_000 * 100_000 + 100_000 + 100_000**2 + 100_000 + 100_000 * 10 + 10
    assert result.param_bytes == 4 * result.params
    assert "GiB" in str(result)


def test_errors_name_the_layer():
    with pytest.raises(TypeError, match=r"summary: expected a lamina Layer such as lm.mlp\(\[10\]\), got function"):
        summary(lm.Relu, (3,))
    with pytest.raises(TypeError, match=r"serial\[0\] Dense\(4\): input_shape must be a tuple of ints"):
        summary(lm.mlp([4]), 3)


def test_a_user_layer_with_a_non_matrix_W_is_counted_without_crashing():
    # It used to be taken for a Dense layer by its key "W" and crash.
    odd = lm.Layer(lambda k, s: (s, {"W": jnp.ones((2, 2, 3), jnp.float32)}),
                   lambda p, x, *, key=None: x * p["W"], "Odd")
    info = summary(lm.serial(odd, lm.Flatten(), lm.Dense(4)), (2, 2, 3), show=False)
    assert [r.params for r in info.rows] == [12, 0, 4 * 12 + 4]
    assert [r.flops for r in info.rows] == [0, 0, 2 * 12 * 4 + 4]


def test_integer_inputs_with_input_dtype():
    # A token-id model: a lookup table, then a dense layer over the mean.
    def init(key, shape):
        return (8,), {"table": jnp.ones((10, 8), jnp.float32)}

    def apply(params, ids, *, key=None):
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"expected integer ids, got {ids.dtype}")
        return params["table"][ids].mean(axis=0)

    model = lm.serial(lm.Layer(init, apply, "Lookup"), lm.Dense(3))
    info = summary(model, (5,), show=False, input_dtype=jnp.int32)
    assert info.params == 80 + 8 * 3 + 3 and info.output_shape == (3,)
    lm.check_params(model, model.init(jax.random.key(0), (5,))[1], (5,), input_dtype=jnp.int32)
    assert lm.param_shapes(model, (5,), input_dtype=jnp.int32)[0] == (3,)
    with pytest.raises(TypeError, match="expected integer ids"):
        summary(model, (5,), show=False)  # float32 by default
