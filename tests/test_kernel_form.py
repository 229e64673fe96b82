"""The compiled forward holds no transposed copy of any weight matrix.

A literal `x @ W.T` makes XLA:CPU materialize W transposed on every call at
small batch (6x slower for a 2048x1024 layer); lamina's dense contracts W's
axis 1 directly. These tests read the optimized HLO that XLA will run.
"""

import re

import jax
import jax.numpy as jnp
import pytest
from jax import lax

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


def _normalized(hlo_text):
    # Drop what names the source (metadata, instruction and parameter names)
    # and keep what XLA runs.
    text = re.sub(r", metadata=\{[^}]*\}", "", hlo_text)
    text = re.sub(r"%[\w.\-]+|\b\w+(\.\d+)?: (?=\w+\[)", "%v", text)
    keep = []
    for line in text.splitlines():
        if line.startswith(("HloModule", "FileNames", "FunctionNames", "FileLocations", "StackFrames")):
            continue
        if re.match(r"^\d+ ", line) or line.strip().startswith("{") or not line.strip():
            continue
        keep.append(line.strip())
    return keep


def _hand_written_forward(params, xs):
    for i, (W, b) in enumerate(params):
        xs = lax.dot_general(xs, W, (((1,), (1,)), ((), ()))) + jnp.broadcast_to(b, (xs.shape[0], b.shape[0]))
        if i < len(params) - 1:
            xs = jax.nn.relu(xs)
    return xs


@pytest.mark.parametrize("batch", [1, 256])
def test_forward_compiles_to_the_hand_written_program(batch):
    # DESIGN's promise: lamina adds nothing to the compiled program.
    model = lm.mlp([256, 256, 10])
    _, params = model.init(jax.random.key(0), (784,))
    plain = [(p["W"], p["b"]) for p in params]
    xs = jnp.ones((batch, 784))
    ours = _normalized(lm.forward(model).lower(params, xs).compile().as_text())
    theirs = _normalized(jax.jit(_hand_written_forward).lower(plain, xs).compile().as_text())
    assert ours == theirs
    # Control: the normalization keeps real differences, e.g. the copy a
    # literal W.T costs at batch 1 (at large batch XLA folds it into the dot).
    def literal(params, xs):
        for i, (W, b) in enumerate(params):
            xs = xs @ W.T + jnp.broadcast_to(b, (xs.shape[0], b.shape[0]))
            xs = jax.nn.relu(xs) if i < len(params) - 1 else xs
        return xs

    if batch == 1:
        assert _normalized(jax.jit(literal).lower(plain, xs).compile().as_text()) != ours
