"""Decoding one position at a time with a key-value cache equals the full forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lamina as lm


def _decoded(model, params, ids, max_length):
    """Every position's output, decoded one by one under jit, for a batch of sequences."""
    cache = lm.init_cache(model, params, max_length)
    caches = jax.tree.map(lambda a: jnp.broadcast_to(a, (len(ids),) + a.shape), cache)
    step = jax.jit(jax.vmap(lambda c, i: lm.decode_step(model, params, c, i)))
    outs = []
    for t in range(ids.shape[1]):
        y, caches = step(caches, ids[:, t])
        outs.append(y)
    return np.stack(outs, axis=1), caches


MODELS = {
    "gpt2-like, stacked pre-norm blocks": lambda: lm.tied(
        lm.Embedding(11, 8), lm.PositionEmbedding(max_length=9),
        lm.stack(lm.TransformerEncoderLayer(2, 16, act="gelu_tanh", causal=True), 2),
        lm.LayerNorm()),
    "post-norm blocks, a head": lambda: lm.serial(
        lm.Embedding(11, 8), lm.PositionEmbedding(max_length=9),
        lm.TransformerEncoderLayer(4, 16, norm_first=False, causal=True),
        lm.remat(lm.TransformerEncoderLayer(2, 8, causal=True)), lm.Dense(11)),
    "named layers": lambda: lm.serial(
        tok=lm.Embedding(11, 8), pos=lm.PositionEmbedding(max_length=9),
        blocks=lm.stack(lm.TransformerEncoderLayer(2, 16, causal=True), 2),
        norm=lm.LayerNorm(), head=lm.Dense(11)),
    "attention alone, no bias": lambda: lm.serial(
        lm.Embedding(11, 8), lm.MultiHeadAttention(2, causal=True, use_bias=False),
        lm.RMSNorm(), lm.Dense(6, act="relu"), lm.Dense(11)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_position_equals_the_full_forward_pass(name):
    model = MODELS[name]()
    _, params = model.init(jax.random.key(0), (9,))
    ids = np.random.default_rng(0).integers(0, 11, (3, 7)).astype(np.int32)
    full = lm.forward(model)(params, ids)   # the first 7 positions: causal, so the same as 9
    got, caches = _decoded(model, params, ids, max_length=9)
    np.testing.assert_allclose(got, np.asarray(full), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(caches["position"], [7, 7, 7])


def test_a_full_cache_refuses_outside_jit_and_gives_nan_inside():
    model = MODELS["gpt2-like, stacked pre-norm blocks"]()
    _, params = model.init(jax.random.key(0), (9,))
    cache = lm.init_cache(model, params, max_length=2)
    for i in (1, 2):
        _, cache = lm.decode_step(model, params, cache, jnp.int32(i))
    with pytest.raises(ValueError, match=r"decode_step: the cache is full: it holds 2 positions"):
        lm.decode_step(model, params, cache, jnp.int32(3))
    y, _ = jax.jit(lambda c: lm.decode_step(model, params, c, jnp.int32(3)))(cache)
    assert bool(jnp.isnan(y).all())


@pytest.mark.parametrize("model, message", [
    (lm.serial(lm.Embedding(5, 8), lm.TransformerEncoderLayer(2, 8)),
     r"serial\[1\] init_cache: TransformerEncoderLayer\(2, 8\) cannot run one position at a "
     r"time \(it is not causal: every position sees the later ones\)"),
    (lm.serial(lm.Embedding(5, 8), lm.serial(lm.Dense(4), lm.MaxPool(2))),
     r"serial\[1\].serial\[1\] init_cache: MaxPool\(2\) cannot run one position at a time; "
     r"decoding takes position-wise layers, PositionEmbedding, causal attention"),
    (lm.serial(lm.Embedding(5, 8), lm.PositionEmbedding()),
     r"init_cache: PositionEmbedding\(\) holds 4 positions, fewer than max_length=6"),
])
def test_what_cannot_decode_is_refused_by_name(model, message):
    _, params = model.init(jax.random.key(0), (4,))
    with pytest.raises(ValueError, match=message):
        lm.init_cache(model, params, max_length=6)


def test_positions_past_max_length_are_nan_without_attention_too():
    model = lm.serial(lm.Embedding(5, 4), lm.PositionEmbedding(max_length=3), lm.Dense(5))
    _, params = model.init(jax.random.key(0), (3,))
    cache = jax.tree.map(jnp.asarray, lm.init_cache(model, params, max_length=3))
    step = jax.jit(lambda c, i: lm.decode_step(model, params, c, i))
    ys = []
    for i in (1, 2, 3, 4):
        y, cache = step(cache, jnp.int32(i))
        ys.append(y)
    full = model.apply(params, jnp.array([1, 2, 3]))
    np.testing.assert_allclose(np.stack(ys[:3]), full, rtol=1e-6, atol=1e-6)
    assert bool(jnp.isnan(ys[3]).all())


def test_max_length_must_be_a_count():
    model = lm.serial(lm.Embedding(5, 8), lm.Dense(5))
    _, params = model.init(jax.random.key(0), (4,))
    with pytest.raises(ValueError, match=r"init_cache: max_length must be an int >= 1, got 0"):
        lm.init_cache(model, params, 0)
    with pytest.raises(TypeError, match=r"max_length must be an int >= 1, got 2.0"):
        lm.init_cache(model, params, 2.0)
