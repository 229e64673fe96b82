"""lm.stack (n copies under lax.scan) and lm.remat (jax.checkpoint), against serial of the copies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy.special import erf

import lamina as lm

N = 4
BLOCK = lm.residual(lm.serial(lm.LayerNorm(), lm.Dense(16, act="gelu"), lm.Dropout(0.25),
                              lm.Dense(6)))


def assert_trees_close(got, want, **tol):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), **tol)


def numpy_block(p, x):
    """The block by hand in float64 (no dropout): x + W2 gelu(W1 LN(x) + b1) + b2, exact gelu."""
    ln, d1, _, d2 = (jax.tree.map(lambda a: np.asarray(a, np.float64), q) for q in p[0])
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    h = (x - mean) / np.sqrt(var + 1e-5) * ln["scale"] + ln["offset"]
    z = h @ d1["W"].T + d1["b"]
    g = 0.5 * z * (1 + erf(z / np.sqrt(2)))
    return x + g @ d2["W"].T + d2["b"]


@pytest.fixture(scope="module")
def stacked():
    model = lm.stack(BLOCK, N)
    _, params = model.init(jax.random.key(0), (6,))
    return model, params


@pytest.mark.slow
def test_params_are_the_copies_params_on_a_leading_axis(stacked):
    model, params = stacked
    assert params[0][1]["W"].shape == (N, 16, 6) and params[0][0]["scale"].shape == (N, 6)
    # The copies get split(key, n), as serial's children do.
    _, serial_params = lm.serial(*[BLOCK] * N).init(jax.random.key(0), (6,))
    for got, want in zip(model.unstack(params), serial_params):
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(g, w)
    # Independent keys: no two copies start equal.
    W = np.asarray(params[0][1]["W"])
    assert all(not np.allclose(W[i], W[j]) for i in range(N) for j in range(i))
    restacked = model.restack(model.unstack(params))
    assert_trees_close(restacked, params, rtol=0, atol=0)


def test_output_equals_numpy_copies(stacked):
    model, params = stacked
    x = np.asarray(jax.random.normal(jax.random.key(1), (6,)), np.float64)
    want = x
    for p in model.unstack(params):
        want = numpy_block(p, want)
    np.testing.assert_allclose(model.apply(params, jnp.asarray(x, jnp.float32)), want,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("unroll", [1, 3])
def test_outputs_gradients_and_dropout_masks_equal_serial(stacked, unroll):
    model, params = stacked
    model = model.replace(unroll=unroll)
    reference = lm.serial(*[BLOCK] * N)
    copies = model.unstack(params)
    xs = jax.random.normal(jax.random.key(1), (5, 6))
    key = jax.random.key(7)
    # With a key, dropout is on: equal outputs mean equal masks.
    got = lm.forward(model)(params, xs, key=key)
    want = lm.forward(reference)(copies, xs, key=key)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, lm.forward(model)(params, xs))  # dropout really dropped

    def loss(m, p):
        return jnp.sum(lm.forward(m)(p, xs, key=key) ** 2)

    assert_trees_close(model.unstack(jax.grad(loss, argnums=1)(model, params)),
                       jax.grad(loss, argnums=1)(reference, copies), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_batch_norm_state_is_stacked_and_updates_like_serial():
    block = lm.serial(lm.Dense(5), lm.BatchNorm(), lm.Relu())
    model, reference = lm.stack(block, 3), lm.serial(*[block] * 3)
    _, params = model.init(jax.random.key(0), (5,))
    state = lm.init_state(model, (5,))
    assert state[1]["running_mean"].shape == (3, 5)
    assert state[1]["num_batches_tracked"].shape == (3,)
    xs = jax.random.normal(jax.random.key(1), (16, 5)) * 3 + 1
    ys, new = lm.forward(model)(params, xs, state=state, train=True)
    ys_ref, new_ref = lm.forward(reference)(model.unstack(params), xs,
                                            state=model.unstack(state), train=True)
    np.testing.assert_allclose(ys, ys_ref, rtol=1e-5, atol=1e-5)
    assert_trees_close(model.unstack(new), new_ref, rtol=1e-5, atol=1e-6)
    # Each copy's running mean moved by 0.1 of its own batch mean (torch's momentum).
    h = np.asarray(xs, np.float64)
    for i, p in enumerate(model.unstack(params)):
        z = h @ np.asarray(p[0]["W"], np.float64).T + np.asarray(p[0]["b"], np.float64)
        np.testing.assert_allclose(new[1]["running_mean"][i], 0.1 * z.mean(0), rtol=1e-4,
                                   atol=1e-5)
        h = np.maximum((z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5), 0)
    with pytest.raises(lm.LaminaError, match="has state"):
        model.apply(params, xs[0])


def test_a_layer_that_changes_the_shape_is_refused_naming_both_shapes():
    with pytest.raises(lm.LaminaError, match=r"stack\(Dense\(3\), 2\): .*maps \(4,\) to \(3,\)"):
        lm.stack(lm.Dense(3), 2).init(jax.random.key(0), (4,))


def test_unstacked_params_are_refused_naming_the_stack_and_the_leaf(stacked):
    model, params = stacked
    with pytest.raises(lm.LaminaError, match=r"stack\(residual.*leading axis of size 4.*"
                                             r"'0\.0\.offset' with shape \(6,\)"):
        model.apply(model.unstack(params)[0], jnp.ones(6))


@pytest.mark.parametrize("bad, message", [
    (dict(n=0), "n must be >= 1, got 0"),
    (dict(n=2.0), "n must be an int, got float 2.0"),
    (dict(n=2, unroll=0), "unroll must be >= 1"),
])
def test_bad_configuration(bad, message):
    with pytest.raises(lm.LaminaError, match=message):
        lm.stack(lm.Dense(3), **bad)


@pytest.mark.slow
def test_one_trace_of_the_block_whatever_n():
    def size(n):
        model = lm.stack(BLOCK, n)
        _, params = model.init(jax.random.key(0), (6,))
        return len(jax.make_jaxpr(model.apply)(params, jnp.ones(6)).eqns)

    assert size(2) == size(64)


@pytest.mark.slow
def test_remat_equals_the_layer_and_composes_with_stack(stacked):
    model, params = stacked
    xs = jax.random.normal(jax.random.key(1), (5, 6))
    key = jax.random.key(3)
    for policy in (None, jax.checkpoint_policies.dots_saveable, "nothing_saveable"):
        rematted = lm.stack(lm.remat(BLOCK, policy), N)

        def loss(m, p):
            return jnp.sum(lm.forward(m)(p, xs, key=key) ** 2)

        np.testing.assert_allclose(lm.forward(rematted)(params, xs, key=key),
                                   lm.forward(model)(params, xs, key=key), rtol=1e-6, atol=1e-6)
        assert_trees_close(jax.grad(loss, argnums=1)(rematted, params),
                           jax.grad(loss, argnums=1)(model, params), rtol=1e-5, atol=1e-6)
    # The recomputation is really there: the backward pass holds a remat.
    jaxpr = jax.make_jaxpr(jax.grad(lambda p: lm.remat(BLOCK).apply(p[0], xs[0]).sum()))(
        (model.unstack(params)[0],))
    assert "remat" in str(jaxpr) or "checkpoint" in str(jaxpr)


def test_remat_policy_is_kept_by_name():
    a = lm.remat(BLOCK, jax.checkpoint_policies.dots_saveable)
    assert a == lm.remat(BLOCK, "dots_saveable") and a.policy == "dots_saveable"
    assert repr(a).endswith("policy='dots_saveable')")
    with pytest.raises(lm.LaminaError, match="unknown policy 'dots'"):
        lm.remat(BLOCK, "dots")
    with pytest.raises(TypeError, match="policy must be a function"):
        lm.remat(BLOCK, 3)


def test_remat_of_a_layer_with_state():
    block = lm.serial(lm.Dense(5), lm.BatchNorm())
    _, params = block.init(jax.random.key(0), (5,))
    state = lm.init_state(block, (5,))
    xs = jax.random.normal(jax.random.key(1), (8, 5))
    got = lm.forward(lm.remat(block))(params, xs, state=state, train=True)
    want = lm.forward(block)(params, xs, state=state, train=True)
    assert_trees_close(got, want, rtol=1e-6, atol=1e-6)


def test_trace_summary_and_check_params_see_every_copy(stacked):
    model, params = stacked
    steps = lm.trace(model, params, jnp.ones(6))
    paths = [s.path for s in steps]
    assert paths[:5] == ["stack[0].residual[0].serial[0]", "stack[0].residual[0].serial[1]",
                         "stack[0].residual[0].serial[2]", "stack[0].residual[0].serial[3]",
                         "stack[0]"]
    assert len(steps) == 5 * N and paths[-1] == f"stack[{N - 1}]"
    assert steps[6].params["W"].shape == (16, 6)  # the copy's own params
    np.testing.assert_allclose(steps[-1].output, model.apply(params, jnp.ones(6)), rtol=1e-6)
    # Counts in closed form: per copy LayerNorm 2*6, Dense 16*6+16, Dense 6*16+6.
    s = lm.summary(model, (6,))
    assert s.params == N * (12 + 112 + 102)
    per_copy_flops = (2 * 6 * 16 + 16) + (2 * 16 * 6 + 6) + 6  # two Dense and the residual sum
    dense_and_sum = sum(r.flops for r in s.rows if r.name.startswith(("Dense", "residual")))
    assert dense_and_sum == N * per_copy_flops
    lm.check_params(model, params, (6,))
    bad = jax.tree.map(lambda a: a, params)
    bad = ((bad[0][0], {"W": bad[0][1]["W"][:, :, :5], "b": bad[0][1]["b"]}, (), bad[0][3]),)
    with pytest.raises(lm.LaminaError, match=r"'0\.1\.W': expected shape \(4, 16, 6\), got "
                                             r"\(4, 16, 5\)"):
        lm.check_params(model, bad, (6,))


def test_visualize_draws_the_copies(stacked, tmp_path):
    model, params = stacked
    html = lm.visualize(model, params, jnp.ones(6))
    assert "stack[3].residual[0].serial[3]" in html


def test_checkpoint_rebuilds_a_stack_of_remat(stacked, tmp_path):
    model, params = stacked
    model = lm.serial(lm.Dense(6), lm.stack(lm.remat(BLOCK, "dots_saveable"), N, unroll=2))
    _, params = model.init(jax.random.key(0), (3,))
    path = tmp_path / "deep.safetensors"
    lm.save(path, params, model=model)
    rebuilt, loaded = lm.load_model(path)
    assert rebuilt == model
    xs = jax.random.normal(jax.random.key(1), (4, 3))
    np.testing.assert_array_equal(lm.forward(rebuilt)(loaded, xs), lm.forward(model)(params, xs))
    with pytest.raises(TypeError, match="a function"):
        lm.save(tmp_path / "x.safetensors", params[1],
                model=lm.stack(lm.remat(BLOCK, lambda *a, **k: False), N))


@pytest.mark.slow
def test_from_torch_takes_a_sequential_of_identical_blocks():
    torch.manual_seed(0)
    torch_model = torch.nn.Sequential(*[
        torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True,
                                         norm_first=True) for _ in range(3)
    ]).eval()
    model = lm.stack(lm.TransformerEncoderLayer(2, 16), 3)
    params = lm.from_torch(torch_model.state_dict(), like=(model, (5, 8)))
    assert params[0][0][1]["qkv"]["W"].shape == (3, 24, 8)
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32)
    with torch.no_grad():
        want = torch_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(lm.forward(model)(params, x), want, rtol=1e-5, atol=1e-5)
    back = lm.to_torch(params, torch_model.state_dict(), model=model)
    for k, v in torch_model.state_dict().items():
        np.testing.assert_array_equal(back[k], v.numpy())


def test_from_torch_with_a_stack_inside_a_model():
    torch.manual_seed(1)

    def block():
        return torch.nn.Sequential(torch.nn.LayerNorm(4), torch.nn.Linear(4, 8), torch.nn.Tanh(),
                                   torch.nn.Linear(8, 4))

    torch_model = torch.nn.Sequential(torch.nn.Linear(3, 4), *[block() for _ in range(3)])
    model = lm.serial(lm.Dense(4), lm.stack(
        lm.serial(lm.LayerNorm(), lm.Dense(8, act="tanh"), lm.Dense(4)), 3))
    params = lm.from_torch(torch_model.state_dict(), like=(model, (3,)))
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    with torch.no_grad():
        want = torch_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(lm.forward(model)(params, x), want, rtol=1e-5, atol=1e-6)
    assert {"1.0.0.weight", "1.2.2.bias"} <= set(lm.to_torch(params, model=model))


def test_shard_params_rules_see_each_copy():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    model = lm.stack(lm.serial(lm.Dense(8, act="relu"), lm.Dense(4)), 3)
    _, params = model.init(jax.random.key(0), (4,))
    placed = lm.shard_params(params, mesh, model=model)
    P = jax.sharding.PartitionSpec
    assert placed[0]["W"].sharding.spec == P(None, "model", None)
    assert placed[0]["b"].sharding.spec == P(None, "model")
    assert placed[1]["W"].sharding.spec == P(None, None, "model")
    assert placed[1]["b"].sharding.spec == P()


def test_keys_are_derived_only_for_layers_that_use_them():
    def randomness(model, shape=(6,)):
        _, params = model.init(jax.random.key(0), shape)
        jaxpr = jax.make_jaxpr(lambda k: lm.forward(model)(params, jnp.ones((2,) + shape), key=k))(
            jax.random.key(1))
        text = str(jaxpr)
        return text.count("random_split"), text.count("random_bits")

    assert randomness(lm.mlp([8, 6])) == (0, 0)
    assert randomness(lm.stack(lm.residual(lm.Dense(6)), 8)) == (0, 0)
    splits, bits = randomness(lm.serial(lm.Dense(8), lm.Dropout(0.5), lm.Dense(6)))
    assert bits == 1 and splits == 2  # one per batch, one in serial


def test_same_key_same_masks_as_split_per_child():
    model = lm.serial(lm.Dense(6), lm.Dropout(0.5), lm.Dropout(0.5))
    params = ({"W": jnp.eye(6), "b": jnp.zeros(6)}, (), ())
    key, x = jax.random.key(4), jnp.ones(6)
    _, k1, k2 = jax.random.split(key, 3)
    m1 = jax.random.bernoulli(k1, 0.5, (6,))
    m2 = jax.random.bernoulli(k2, 0.5, (6,))
    np.testing.assert_array_equal(model.apply(params, x, key=key), np.where(m1 & m2, 4.0, 0.0))


@pytest.mark.parametrize("layer", [
    lm.stack(lm.residual(lm.Dense(5, act="tanh")), 3),
    lm.remat(lm.serial(lm.Dense(7, act="gelu"), lm.Dense(5))),
], ids=["stack", "remat"])
@pytest.mark.slow
def test_check_layer_passes(layer):
    lm.testing.check_layer(layer, (5,))


@pytest.mark.parametrize("wrap", [
    lambda s: lm.serial(lm.Dense(6), s),
    lambda s: lm.residual(s),
    lambda s: lm.parallel(s, lm.Identity()),
], ids=["serial", "residual", "parallel"])
@pytest.mark.slow
def test_a_stack_inside_a_combinator_still_scans(wrap):
    def size(n):
        model = wrap(lm.stack(lm.residual(lm.Dense(6, act="tanh")), n))
        _, params = model.init(jax.random.key(0), (6,))
        jaxpr = jax.make_jaxpr(model.apply)(params, jnp.ones(6))
        assert "scan" in str(jaxpr)
        return len(jaxpr.eqns)

    assert size(2) == size(32)


def test_a_remat_inside_a_combinator_still_checkpoints():
    model = lm.serial(lm.remat(lm.serial(lm.Dense(6, act="tanh"), lm.Dense(6))), lm.Dense(2))
    _, params = model.init(jax.random.key(0), (6,))
    jaxpr = jax.make_jaxpr(jax.grad(lambda p: model.apply(p, jnp.ones(6)).sum()))(params)
    assert "checkpoint" in str(jaxpr) or "remat" in str(jaxpr)
    # and the transformer block applies its parts' apply too
    block = lm.serial(lm.stack(lm.TransformerEncoderLayer(2, 8), 3), lm.Flatten())
    _, p = block.init(jax.random.key(0), (4, 8))
    assert "scan" in str(jax.make_jaxpr(block.apply)(p, jnp.ones((4, 8))))


@pytest.mark.parametrize("layer", [lm.Activation("tanh"), lm.Dropout(0.5),
                                   lm.residual(lm.Activation("tanh"))], ids=repr)
def test_a_stack_of_a_layer_without_params(layer):
    model = lm.stack(layer, 3)
    _, params = model.init(jax.random.key(0), (4,))
    x = jnp.linspace(-1, 1, 4)
    assert jax.tree.leaves(params) == []
    np.testing.assert_allclose(model.apply(params, x),
                               lm.serial(*[layer] * 3).apply(model.unstack(params), x), rtol=1e-6)


@pytest.mark.slow
def test_a_stack_follows_serial_when_the_block_changes_the_dtype():
    for block, x in [(lm.Dense(4, dtype=jnp.bfloat16), jnp.ones(4)),
                     (lm.Dense(4), jnp.ones(4, jnp.bfloat16))]:
        model = lm.stack(block, 2)
        _, params = model.init(jax.random.key(0), (4,))
        got = model.apply(params, x)
        want = lm.serial(block, block).apply(model.unstack(params), x)
        assert got.dtype == want.dtype
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                                   rtol=1e-2)
    # with state, bfloat16 inputs to float32 params
    model = lm.stack(lm.serial(lm.Dense(4), lm.BatchNorm()), 2)
    _, params = model.init(jax.random.key(0), (4,))
    ys, _ = lm.forward(model)(params, jnp.ones((3, 4), jnp.bfloat16),
                              state=lm.init_state(model, (4,)))
    assert ys.dtype == jnp.float32


def test_remat_refuses_a_policy_factory():
    with pytest.raises(lm.LaminaError, match="unknown policy 'save_anything_except_these_names'"):
        lm.remat(BLOCK, "save_anything_except_these_names")
