"""TransformerDecoderLayer against torch.nn.TransformerDecoderLayer: outputs, input
gradients, masks, and the state dict both ways."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import lamina as lm

# torch comparisons and training: the full suite's, not the day-to-day tier's
pytestmark = pytest.mark.slow

N, T, S, D, H, F = 3, 5, 7, 8, 2, 16
SHAPES = {"tgt": (T, D), "memory": (S, D)}


@pytest.mark.filterwarnings("ignore:Support for mismatched")  # torch's own, on mixed mask kinds
# Every pair of option values occurs (norm_first x act, x masks, act x masks)
# in six cases rather than the twelve of the full grid.
@pytest.mark.parametrize("norm_first, act, masks", [
    (True, "relu", "causal and memory padding"), (False, "gelu", "causal and memory padding"),
    (True, "gelu", "all four"), (False, "relu", "all four"),
    (True, "relu", "none"), (False, "gelu", "none"),
])
def test_equals_torch(norm_first, act, masks):
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    module = torch.nn.TransformerDecoderLayer(D, H, F, dropout=0.0, activation=act,
                                              batch_first=True, norm_first=norm_first).eval()
    layer = lm.TransformerDecoderLayer(H, F, act=act, norm_first=norm_first,
                                       causal=masks == "causal and memory padding")
    theirs = module.state_dict()
    params = lm.from_torch(theirs, like=(layer, SHAPES))
    back = lm.to_torch(params, like=theirs, model=layer)
    assert sorted(back) == sorted(theirs)
    for name, value in theirs.items():
        np.testing.assert_array_equal(back[name], value.numpy(), err_msg=name)

    tgt, memory = (rng.standard_normal((N, n, D)).astype(np.float32) for n in (T, S))
    pad_memory = np.zeros((N, S), bool)
    pad_memory[0, 4:] = True
    pad_tgt = np.zeros((N, T), bool)
    pad_tgt[1, 3:] = True
    tgt_mask = rng.standard_normal((T, T)).astype(np.float32)
    memory_mask = rng.random((T, S)) < 0.3
    memory_mask[:, 0] = False
    theirs_kw, ours = {}, {}
    if masks == "causal and memory padding":
        theirs_kw = {"tgt_mask": torch.triu(torch.ones(T, T, dtype=torch.bool), 1),
                     "memory_key_padding_mask": torch.tensor(pad_memory)}
        ours = {"memory_key_padding_mask": pad_memory}
    elif masks == "all four":
        theirs_kw = {"tgt_mask": torch.tensor(tgt_mask), "memory_mask": torch.tensor(memory_mask),
                     "tgt_key_padding_mask": torch.tensor(pad_tgt),
                     "memory_key_padding_mask": torch.tensor(pad_memory)}
        ours = {"tgt_mask": np.broadcast_to(tgt_mask, (N, T, T)),
                "memory_mask": np.broadcast_to(memory_mask, (N, T, S)),
                "tgt_key_padding_mask": pad_tgt, "memory_key_padding_mask": pad_memory}
    t_tgt, t_memory = (torch.tensor(a, requires_grad=True) for a in (tgt, memory))
    want = module(t_tgt, t_memory, **theirs_kw)
    r = rng.standard_normal(tuple(want.shape)).astype(np.float32)
    (want * torch.tensor(r)).sum().backward()

    fwd = lm.forward(layer)
    inputs = {"tgt": tgt, "memory": memory, **ours}
    np.testing.assert_allclose(fwd(params, inputs), want.detach().numpy(), rtol=1e-5, atol=1e-5)
    grads = jax.grad(lambda a: jnp.sum(fwd(params, {**inputs, **a}) * r))({"tgt": tgt, "memory": memory})
    np.testing.assert_allclose(grads["tgt"], t_tgt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads["memory"], t_memory.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_params_are_named_as_torchs_modules_and_checked():
    layer = lm.TransformerDecoderLayer(H, F)
    _, params = layer.init(jax.random.key(0), SHAPES)
    assert sorted(params) == ["linear1", "linear2", "multihead_attn", "norm1", "norm2", "norm3",
                              "self_attn"]
    assert params["self_attn"]["qkv"]["W"].shape == (3 * D, D)
    assert params["linear1"]["W"].shape == (F, D)
    lm.testing.check_layer(layer, SHAPES)
    inputs = {"tgt": jnp.ones((T, D)), "memory": jnp.ones((S, D))}
    broken = {k: v for k, v in params.items() if k != "norm3"}
    with pytest.raises(ValueError, match=r"TransformerDecoderLayer\(2, 16\): expected params with keys "
                                         r"\['linear1', .*'self_attn'\], got a dict with keys"):
        layer.apply(broken, inputs)


def test_input_errors_name_the_layer():
    layer = lm.TransformerDecoderLayer(H, F)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"expects a dict input with 'tgt' \(T, D\) and 'memory' \(S, D\)"):
        layer.init(key, (T, D))
    with pytest.raises(ValueError, match=r"memory must have shape \(S, 8\), the target's D features, "
                                         r"got \(7, 6\)"):
        layer.init(key, {"tgt": (T, D), "memory": (S, 6)})
    with pytest.raises(ValueError, match=r"memory_key_padding_mask must have shape \(7,\) for a target "
                                         r"of shape \(5, 8\) and a memory of shape \(7, 8\), got \(5,\)"):
        layer.init(key, {**SHAPES, "memory_key_padding_mask": (T,)})
