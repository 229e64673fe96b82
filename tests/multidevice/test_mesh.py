"""Sharded forward and training on 8 CPU devices: same numbers as one device, real collectives.

Runs only in a process started with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/test_sharding.py
starts one); tests/conftest.py skips collecting this folder otherwise.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import lamina as lm
from lamina import shard_batch, shard_params

MESHES = [(1, 8), (8, 1), (2, 4)]
xent = optax.softmax_cross_entropy_with_integer_labels


def make_mesh(data, model):
    return Mesh(np.array(jax.devices()[: data * model]).reshape(data, model), ("data", "model"))


@pytest.fixture(scope="module")
def problem():
    model = lm.mlp([64, 32, 10])
    _, params = model.init(jax.random.key(0), (16,))
    xs = jax.random.normal(jax.random.key(1), (32, 16))
    ys = jax.random.randint(jax.random.key(2), (32,), 0, 10)
    return model, params, xs, ys


def numpy_forward(params, xs):
    h = np.asarray(xs, np.float64)
    for i, p in enumerate(params):
        h = h @ np.asarray(p["W"], np.float64).T + np.asarray(p["b"], np.float64)
        if i < len(params) - 1:
            h = np.maximum(h, 0)
    return h


def hlo(fn, *args):
    return fn.lower(*args).compile().as_text()


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_data_parallel_forward(problem, shape):
    model, params, xs, _ = problem
    mesh = make_mesh(*shape)
    sharded_xs = shard_batch(xs, mesh)
    assert sharded_xs.sharding.spec == P("data")
    out = lm.forward(model)(params, sharded_xs)
    np.testing.assert_allclose(out, numpy_forward(params, xs), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_tensor_parallel_forward_and_collectives(problem, shape):
    model, params, xs, _ = problem
    mesh = make_mesh(*shape)
    sharded = shard_params(params, mesh)
    fwd = lm.forward(model)
    out = fwd(sharded, shard_batch(xs, mesh))
    np.testing.assert_allclose(out, numpy_forward(params, xs), rtol=1e-4, atol=1e-5)
    if mesh.shape["model"] > 1:
        # Megatron alternation: rows, columns, rows; the last W (10 rows) does
        # not divide over 4 or 8 devices and is replicated.
        assert sharded[0]["W"].sharding.spec == P("model", None)
        assert sharded[0]["b"].sharding.spec == P("model")
        assert sharded[1]["W"].sharding.spec == P(None, "model")
        assert sharded[1]["b"].sharding.spec == P()
        assert sharded[2]["W"].sharding.spec == P()
        # The column-split layer's partial sums must be joined by XLA.
        assert "all-reduce" in hlo(fwd, sharded, shard_batch(xs, mesh))


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_train_step_matches_single_device(problem, shape):
    model, params, xs, ys = problem
    # SGD, not Adam: Adam's first step is lr * sign(grad), which turns the
    # rounding noise of near-zero gradients into full-size differences.
    opt = optax.sgd(0.1)
    step = lm.train_step(model, xent, opt)
    copy = jax.tree.map(jnp.copy, params)
    expected, _, expected_metrics = step(copy, opt.init(copy), (xs, ys))

    mesh = make_mesh(*shape)
    sharded = shard_params(jax.tree.map(jnp.copy, params), mesh)
    batch = shard_batch((xs, ys), mesh)
    text = hlo(step, sharded, opt.init(sharded), batch)
    new, _, metrics = step(sharded, opt.init(sharded), batch)
    chex.assert_trees_all_close(jax.device_get(new), jax.device_get(expected), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(metrics["loss"], expected_metrics["loss"], rtol=1e-5)
    # Gradients are averaged over the data axis by XLA, not by lamina code.
    assert "all-reduce" in text
    assert new[0]["W"].sharding.spec == sharded[0]["W"].sharding.spec


def test_explicit_rules_and_uneven_split_error(problem):
    _, params, _, _ = problem
    mesh = make_mesh(2, 4)
    placed = shard_params(params, mesh, rules=[(r"\d+\.W", P(None, "model"))])
    assert placed[0]["W"].sharding.spec == P(None, "model")  # 16 inputs / 4
    assert placed[0]["b"].sharding.spec == P()
    with pytest.raises(ValueError, match=r"shard_params: '2.W' has shape \(10, 32\): dimension 10 cannot be split evenly over the 4 devices of mesh axis 'model'"):
        shard_params(params, mesh, rules=[(r"\d+\.W", P("model", None))])


def test_uneven_batch_names_both_numbers():
    mesh = make_mesh(8, 1)
    with pytest.raises(ValueError, match=r"shard_batch: xs: a batch of 12 cannot be split evenly over the 8 devices of the mesh's 'data' axis"):
        shard_batch(jnp.ones((12, 3)), mesh)


def test_sharded_training_example(tmp_path):
    from example_runner import load

    result = load("sharded_training").main(["--epochs", "3", "--mesh", "2x4"])
    # Same data, same order, same init: the mesh changes only summation order.
    assert abs(result["mesh_accuracy"] - result["single_accuracy"]) <= 1 / 450 + 1e-9
    assert result["mesh_accuracy"] > 0.9
    np.testing.assert_allclose(result["mesh_loss"], result["single_loss"], rtol=1e-3)


def test_docs_sharding_snippet_runs():
    from test_docs import python_blocks

    (block,) = python_blocks("how-to/sharding.md", needs_mesh=True)
    namespace = {}
    exec(compile(block, "docs/how-to/sharding.md", "exec"), namespace)
    assert namespace["params"][0]["W"].sharding.spec == P("model", None)
    assert namespace["params"][1]["W"].sharding.spec == P(None, "model")
    assert np.isfinite(float(namespace["metrics"]["loss"]))


def test_batch_norm_statistics_are_global_on_a_mesh():
    # fit on one device and on a 2x4 mesh: the running statistics agree, so
    # each device's BatchNorm saw the whole batch, not its shard.
    model = lm.serial(lm.Dense(16), lm.BatchNorm(), lm.Relu(), lm.Dense(10))
    _, params = model.init(jax.random.key(0), (16,))
    xs = jax.random.normal(jax.random.key(1), (64, 16)) * 2 + 1
    ys = jax.random.randint(jax.random.key(2), (64,), 0, 10)
    kwargs = dict(loss_fn=xent, epochs=2, batch_size=16, key=jax.random.key(3), progress=False)
    state = lm.init_state(model, (16,))
    # fit consumes (donates) the params it is given: pass each run its own copy.
    _, _, one = lm.fit(model, jax.tree.map(jnp.copy, params), optax.sgd(0.1), (xs, ys),
                       state=state, **kwargs)
    mesh = make_mesh(2, 4)
    _, _, sharded = lm.fit(model, shard_params(params, mesh), optax.sgd(0.1),
                           shard_batch((xs, ys), mesh), state=shard_params(state, mesh), **kwargs)
    assert int(sharded[1]["num_batches_tracked"]) == 8
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(sharded[1][name], one[1][name], rtol=1e-5, atol=1e-5)
    # shard_params replicates state: nothing in it is a weight to split.
    placed = shard_params(state, mesh)
    assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(placed))


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_cnn_and_transformer_train_steps_on_a_mesh_match_one_device(name):
    if name == "cnn":
        model = lm.serial(lm.Conv(8, 3, padding=1, act="relu"), lm.MaxPool(2),
                          lm.Conv(8, 3, padding=1, act="relu"), lm.GlobalAvgPool(), lm.Dense(10))
        shape = (3, 8, 8)
        xs = jax.random.normal(jax.random.key(1), (16,) + shape)
    else:
        model = lm.serial(lm.TransformerEncoderLayer(4, 32, causal=True), lm.Flatten(),
                          lm.Dense(10))
        shape = (6, 16)
        xs = jax.random.normal(jax.random.key(1), (16,) + shape)
    ys = jax.random.randint(jax.random.key(2), (16,), 0, 10)
    _, params = model.init(jax.random.key(0), shape)
    opt = optax.sgd(0.1)  # not Adam: it magnifies rounding in gradients near zero
    step = lm.train_step(model, xent, opt)
    one, _, one_metrics = step(jax.tree.map(jnp.copy, params), opt.init(params), (xs, ys))
    mesh = make_mesh(2, 4)
    placed = shard_params(params, mesh)
    split = [leaf.sharding.spec for leaf in jax.tree.leaves(placed)]
    assert any("model" in tuple(spec) for spec in split)  # weights really are split
    sharded, _, metrics = step(placed, opt.init(placed), shard_batch((xs, ys), mesh))
    np.testing.assert_allclose(metrics["loss"], one_metrics["loss"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 sharded, one)


def test_stacked_transformer_train_step_on_a_mesh_matches_one_device():
    # stack's params carry a leading axis of copies: with model=, the rules see
    # each copy's weights (qkv by rows, out by columns) and the copies stay whole.
    model = lm.serial(lm.stack(lm.TransformerEncoderLayer(4, 32), 3), lm.Flatten(), lm.Dense(10))
    shape = (6, 16)
    xs = jax.random.normal(jax.random.key(1), (16,) + shape)
    ys = jax.random.randint(jax.random.key(2), (16,), 0, 10)
    _, params = model.init(jax.random.key(0), shape)
    opt = optax.sgd(0.1)
    step = lm.train_step(model, xent, opt)
    one, _, one_metrics = step(jax.tree.map(jnp.copy, params), opt.init(params), (xs, ys))
    mesh = make_mesh(2, 4)
    placed = shard_params(params, mesh, model=model)
    attention = placed[0][0][0][1]
    assert attention["qkv"]["W"].sharding.spec == P(None, "model", None)
    assert attention["out"]["W"].sharding.spec == P(None, None, "model")
    sharded, _, metrics = step(placed, opt.init(placed), shard_batch((xs, ys), mesh))
    np.testing.assert_allclose(metrics["loss"], one_metrics["loss"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 sharded, one)
