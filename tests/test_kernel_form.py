"""The compiled forward holds no transposed copy of any weight matrix.

A literal `x @ W.T` makes XLA:CPU materialize W transposed on every call at
small batch (6x slower for a 2048x1024 layer); lamina's dense contracts W's
axis 1 directly. These tests read the optimized HLO that XLA will run.
"""

import re

import jax
import jax.numpy as jnp
import pytest

import lamina as lm

# A transpose or copy instruction with a 2-D result, e.g.
#   %copy.1 = f32[1024,2048]{1,0} copy(%transpose.0)
INSTRUCTION = re.compile(r"= \w+\[(\d+),(\d+)\]\S* (transpose|copy)\(")


def weight_copies(hlo_text, params):
    shapes = {tuple(sorted(leaf.shape)) for leaf in jax.tree.leaves(params) if leaf.ndim == 2}
    return [
        line.strip()[:160]
        for line in hlo_text.splitlines()
        if (m := INSTRUCTION.search(line)) and tuple(sorted((int(m[1]), int(m[2])))) in shapes
    ]


@pytest.fixture(scope="module")
def mlp():
    model = lm.mlp([2048, 2048, 1024])
    _, params = model.init(jax.random.key(0), (1024,))
    return model, params


def test_detector_catches_a_literal_transpose(mlp):
    _, params = mlp
    W = params[0]["W"]
    text = jax.jit(lambda W, x: x @ W.T).lower(W, jnp.ones((1, 1024))).compile().as_text()
    assert weight_copies(text, params), "the check must see the copy a literal W.T makes"


@pytest.mark.parametrize("batch", [1, 8])
def test_batched_forward_has_no_weight_copy(mlp, batch):
    model, params = mlp
    text = lm.forward(model).lower(params, jnp.ones((batch, 1024))).compile().as_text()
    assert " dot(" in text
    assert weight_copies(text, params) == []


def test_single_example_apply_has_no_weight_copy(mlp):
    model, params = mlp
    text = jax.jit(model.apply).lower(params, jnp.ones(1024)).compile().as_text()
    assert weight_copies(text, params) == []


def test_leading_batch_axes_have_no_weight_copy(mlp):
    _, params = mlp
    layer = lm.Dense(2048)
    text = jax.jit(layer.apply).lower(params[0], jnp.ones((2, 3, 1024))).compile().as_text()
    assert weight_copies(text, params[:1]) == []


def test_backward_pass_has_no_weight_copy_at_batch_one(mlp):
    # dW = outer(dz, x) is produced directly in (out, in) layout; dx = dz @ W
    # contracts W's axis 0, which XLA also does without a copy.
    model, params = mlp

    def loss(p, xs):
        return jnp.sum(lm.forward(model)(p, xs) ** 2)

    text = jax.jit(jax.grad(loss)).lower(params, jnp.ones((1, 1024))).compile().as_text()
    assert weight_copies(text, params) == []
