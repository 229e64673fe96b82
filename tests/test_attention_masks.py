"""MultiHeadAttention with masks and cross-attention, against torch.nn.MultiheadAttention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import lamina as lm

# torch comparisons and training: the full suite's, not the day-to-day tier's
pytestmark = pytest.mark.slow

N, T, S, D, H = 3, 5, 7, 8, 2


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((N, n, D)).astype(np.float32) for n in (T, S, S))
    pad = np.zeros((N, S), bool)
    pad[0, 5:], pad[2, :2] = True, True  # padding at either end, none in example 1
    blocked = rng.random((T, S)) < 0.3
    blocked[:, 3] = False  # every query keeps a key
    return rng, q, k, v, pad, blocked


CASES = {
    "cross": lambda a: {},
    "key padding": lambda a: {"key_padding_mask": a["pad"]},
    "bool attn_mask": lambda a: {"attn_mask": a["blocked"]},
    "float attn_mask and padding": lambda a: {"attn_mask": a["float"], "key_padding_mask": a["pad"]},
    "float key padding": lambda a: {"key_padding_mask": np.where(a["pad"], -1e9, 0.0).astype(np.float32)},
}


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")  # torch's own
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_masks_and_cross_attention_equal_torch(case, use_bias):
    rng, q, k, v, pad, blocked = _arrays()
    masks = CASES[case]({"pad": pad, "blocked": blocked,
                         "float": rng.standard_normal((T, S)).astype(np.float32)})
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(D, H, bias=use_bias, batch_first=True).eval()
    layer = lm.MultiHeadAttention(H, use_bias=use_bias)
    params = lm.from_torch(mha.state_dict(), like=(layer, {"query": (T, D), "key": (S, D)}))
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    want = mha(tq, tk, tv, need_weights=False, **{n: torch.tensor(m) for n, m in masks.items()})[0]
    r = rng.standard_normal(tuple(want.shape)).astype(np.float32)
    (want * torch.tensor(r)).sum().backward()
    # Per example: torch's (T, S) attn_mask is shared by the batch, so it is repeated.
    inputs = {"query": q, "key": k, "value": v}
    inputs.update({n: m if m.ndim == 2 and n == "key_padding_mask" else np.broadcast_to(m, (N,) + m.shape)
                   for n, m in masks.items()})
    fwd = lm.forward(layer)
    np.testing.assert_allclose(fwd(params, inputs), want.detach().numpy(), rtol=1e-5, atol=1e-5)
    grads = jax.grad(lambda qkv: jnp.sum(fwd(params, {**inputs, **qkv}) * r))(
        {"query": q, "key": k, "value": v})
    for name, t in (("query", tq), ("key", tk), ("value", tv)):
        np.testing.assert_allclose(grads[name], t.grad.numpy(), rtol=1e-4, atol=1e-4, err_msg=name)


def test_self_attention_with_padding_and_causal_equals_torch():
    _, q, _, _, _, _ = _arrays(1)
    pad = np.zeros((N, T), bool)
    pad[1, 3:] = True
    torch.manual_seed(1)
    mha = torch.nn.MultiheadAttention(D, H, batch_first=True).eval()
    layer = lm.MultiHeadAttention(H, causal=True)
    params = lm.from_torch(mha.state_dict(), like=(layer, (T, D)))
    causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    want = mha(*(torch.tensor(q),) * 3, need_weights=False, attn_mask=causal,
               key_padding_mask=torch.tensor(pad))[0].detach().numpy()
    got = lm.forward(layer)(params, {"query": q, "key_padding_mask": pad})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # The plain array input is self-attention without masks, as before.
    np.testing.assert_allclose(lm.forward(layer)(params, q),
                               lm.forward(layer)(params, {"query": q}), rtol=0, atol=0)


def test_a_query_with_every_key_masked_gets_nan_as_in_torch():
    layer = lm.MultiHeadAttention(H)
    _, params = layer.init(jax.random.key(0), (T, D))
    x = np.ones((T, D), np.float32)
    out = layer.apply(params, {"query": x, "key_padding_mask": np.ones(T, bool)})
    assert np.isnan(np.asarray(out)).all()


def test_mask_and_part_errors_name_the_layer():
    layer = lm.MultiHeadAttention(H)
    k = jax.random.key(0)
    with pytest.raises(ValueError, match=r"MultiHeadAttention\(2\): a dict input holds 'query', 'key', "
                                         r"'value', 'key_padding_mask', 'attn_mask' \(at least 'query'\), "
                                         r"got keys \['mask', 'query'\]"):
        layer.init(k, {"query": (T, D), "mask": (T,)})
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(7,\) for a query of shape "
                                         r"\(5, 8\) and keys of shape \(7, 8\), got \(5,\)"):
        layer.init(k, {"query": (T, D), "key": (S, D), "key_padding_mask": (T,)})
    with pytest.raises(ValueError, match=r"key must have shape \(7, 8\) for a query of shape \(5, 8\) "
                                         r"\(S positions of the query's D features\), got \(7, 6\)"):
        layer.init(k, {"query": (T, D), "key": (S, 6)})
    _, params = layer.init(k, (T, D))
    with pytest.raises(TypeError, match=r"key_padding_mask must be bool \(True: may not look\) or float "
                                        r"\(added to the scores\), got int32"):
        layer.apply(params, {"query": jnp.ones((T, D)), "key_padding_mask": jnp.zeros(T, jnp.int32)})


ENCODER_MASKS = {
    "key padding": lambda a: {"src_key_padding_mask": a["pad"]},
    "bool src_mask": lambda a: {"src_mask": a["blocked"]},
    "float src_mask and padding": lambda a: {"src_mask": a["float"],
                                             "src_key_padding_mask": a["pad"]},
}


@pytest.mark.filterwarnings("ignore:Support for mismatched")  # torch's own
@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("case", sorted(ENCODER_MASKS))
def test_encoder_layer_masks_equal_torch(case, norm_first):
    rng = np.random.default_rng(3)
    src = rng.standard_normal((N, S, D)).astype(np.float32)
    _, _, _, _, pad, _ = _arrays()
    blocked = rng.random((S, S)) < 0.3
    blocked[:, 0] = False  # every position keeps a key
    masks = ENCODER_MASKS[case]({"pad": pad, "blocked": blocked,
                                 "float": rng.standard_normal((S, S)).astype(np.float32)})
    torch.manual_seed(1)
    net = torch.nn.TransformerEncoderLayer(D, H, 16, dropout=0.0, batch_first=True,
                                           norm_first=norm_first)
    # Train mode (no dropout here): torch's inference fast path returns zeros at
    # padded positions instead of what its own math computes there.
    net.train()
    layer = lm.TransformerEncoderLayer(H, 16, norm_first=norm_first)
    params = lm.from_torch(net.state_dict(), like=(layer, (S, D)))
    tsrc = torch.tensor(src, requires_grad=True)
    want = net(tsrc, **{n: torch.tensor(m) for n, m in masks.items()})
    r = rng.standard_normal(tuple(want.shape)).astype(np.float32)
    (want * torch.tensor(r)).sum().backward()
    inputs = {"src": src, **{n: m if n == "src_key_padding_mask" else np.broadcast_to(m, (N,) + m.shape)
                            for n, m in masks.items()}}
    fwd = lm.forward(layer)
    np.testing.assert_allclose(fwd(params, inputs), want.detach().numpy(), rtol=1e-5, atol=1e-5)
    grad = jax.grad(lambda s: jnp.sum(fwd(params, {**inputs, "src": s}) * r))(src)
    np.testing.assert_allclose(grad, tsrc.grad.numpy(), rtol=1e-4, atol=1e-4)
    # Without masks, the dict input is the array input.
    np.testing.assert_array_equal(fwd(params, {"src": src}), fwd(params, src))


def test_encoder_layer_with_masks_passes_check_layer_and_its_errors_name_it():
    layer = lm.TransformerEncoderLayer(H, 16, causal=True)
    lm.testing.check_layer(layer, {"src": (4, D), "src_mask": (4, 4)})
    shapes = {"src": (4, D), "src_mask": (4, 4), "src_key_padding_mask": (4,)}
    masks = {"src": jnp.float32, "src_mask": jnp.bool_, "src_key_padding_mask": jnp.bool_}
    lm.testing.check_layer(lm.TransformerEncoderLayer(H, 16), shapes, input_dtype=masks)
    with pytest.raises(ValueError, match=r"expects an array \(T, D\) or a dict with 'src' \(T, D\) "
                                         r"and optionally 'src_mask' \(T, T\) and "
                                         r"'src_key_padding_mask' \(T,\); got input shape"):
        layer.init(jax.random.key(0), {"src": (4, D), "memory": (4, D)})
    with pytest.raises(ValueError, match=r"src_key_padding_mask must have shape \(4,\) for a "
                                         r"sequence of shape \(4, 8\), got \(5,\)"):
        layer.init(jax.random.key(0), {"src": (4, D), "src_key_padding_mask": (5,)})
