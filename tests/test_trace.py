"""Trace steps carry structure as values: the layer, its activation, where its input came from."""

import jax
import jax.numpy as jnp
import numpy as np

import lamina as lm


def test_steps_say_which_steps_fed_them(key):
    block = lm.serial(lm.Dense(4, act="tanh"), lm.Dense(4))
    model = lm.serial(
        lm.Dense(4, act="relu"),                                   # 0
        lm.residual(block),                                        # 1, 2 inside; 3 the sum
        lm.parallel(lm.Dense(2), lm.serial(lm.LayerNorm(), lm.Dense(3))),  # 4; 5, 6; 7 tuple
        lm.Concat(),                                               # 8
    )
    _, params = model.init(key, (3,))
    x = jnp.array([0.5, -1.0, 2.0])
    steps = lm.trace(model, params, x)
    assert [s.path for s in steps] == [
        "serial[0]", "serial[1].residual[0].serial[0]", "serial[1].residual[0].serial[1]",
        "serial[1]", "serial[2].parallel[0]", "serial[2].parallel[1].serial[0]",
        "serial[2].parallel[1].serial[1]", "serial[2]", "serial[3]",
    ]
    assert [s.sources for s in steps] == [
        (-1,), (0,), (1,), (0, 2), (3,), (3,), (5,), (4, 6), (7,),
    ]
    # Each source's output is exactly what the step received.
    for s in steps:
        fed = [x if j < 0 else steps[j].output for j in s.sources]
        if s.layer.kind == "residual":
            np.testing.assert_array_equal(s.output, fed[0] + fed[1])
        elif s.layer.kind == "parallel":
            assert all(np.array_equal(a, b) for a, b in zip(s.output, fed))
        else:
            assert len(fed) == 1
            jax.tree.map(np.testing.assert_array_equal, s.input, fed[0])


def test_steps_carry_the_layer_and_its_activation(key):
    model = lm.serial(lm.Dense(4, act=jax.nn.relu), lm.Dense(2, act="sigmoid"), lm.Dense(1))
    _, params = model.init(key, (3,))
    steps = lm.trace(model, params, jnp.ones(3))
    assert [s.layer for s in steps] == list(model.layers)
    assert [s.act for s in steps] == ["relu", "sigmoid", None]
    assert [s.layer.kind for s in steps] == ["dense"] * 3


def test_a_user_layer_with_its_own_trace_keeps_working(key):
    def init(key, shape):
        return shape, ()

    def apply(params, x, *, key=None):
        return 2 * x

    def trace(params, x, *, key=None):
        y = apply(params, x)
        return y, [lm.TraceStep("", (), "Double", x, params, None, y)]

    model = lm.serial(lm.Dense(2), lm.Layer(init, apply, "Double", trace))
    _, params = model.init(key, (3,))
    steps = lm.trace(model, params, jnp.ones(3))
    assert steps[1].sources == (0,) and steps[1].layer is None
    assert "Double" in lm.visualize(model, params, jnp.ones(3))
    assert lm.summary(model, (3,), show=False).rows[1].flops == 0


class Scale(lm.Layer):
    """A new kind of layer written as a subclass: it says its own FLOPs and kind."""

    kind = "layer"

    def __init__(self):
        super().__init__(self._init, self._apply, "Scale()")

    @staticmethod
    def _init(key, shape):
        return shape, {"W": jnp.full(shape, 3.0, jnp.float32)}  # not 2-D for (2, 2, 2)

    @staticmethod
    def _apply(params, x, *, key=None):
        return params["W"] * x

    def flops(self, step):
        return int(np.prod(step.output.shape))


def test_a_new_layer_kind_needs_no_edit_in_summary_or_visualize(key):
    model = lm.serial(Scale(), lm.Flatten(), lm.Dense(2))
    info = lm.summary(model, (2, 2, 2), show=False)
    assert [r.flops for r in info.rows] == [8, 0, 2 * 8 * 2 + 2]
    assert [r.params for r in info.rows] == [8, 0, 18]
    _, params = model.init(key, (2, 2, 2))
    page = lm.visualize(model, params, jnp.ones((2, 2, 2)))
    assert "Scale()" in page and "3.0000" in page
