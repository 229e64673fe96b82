"""The layers real models need (merges, upsampling, reshapes, adaptive pooling) and
torch's pooling and padding options, each against PyTorch: outputs to 1e-5, input
gradients to 1e-4."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

import lamina as lm


def _against_torch(layer, torch_fn, *xs, rtol=1e-5, atol=1e-5):
    """lamina's batched output and input gradient (of a random projection) equal torch's."""
    tx = [torch.tensor(x, requires_grad=True) for x in xs]
    want = torch_fn(*tx)
    r = np.random.default_rng(9).standard_normal(tuple(want.shape)).astype(np.float32)
    (want * torch.tensor(r)).sum().backward()
    fwd = lm.forward(layer)
    arg = tuple(xs) if len(xs) > 1 else xs[0]
    got = fwd((), arg)
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=rtol, atol=atol)
    grads = jax.grad(lambda a: jnp.sum(fwd((), a) * r))(arg)
    for g, t in zip(grads if len(xs) > 1 else [grads], tx):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-4, atol=1e-4)


def _normal(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --- Add, Multiply ------------------------------------------------------------

@pytest.mark.parametrize("layer, op", [(lm.Add(), torch.add), (lm.Multiply(), torch.mul)])
def test_merges_equal_torch_with_broadcasting_over_axes_of_size_one(layer, op):
    a, b, c = _normal(2, 3, 4, 4), _normal(2, 3, 1, 1, seed=1), _normal(2, 3, 4, 4, seed=2)
    _against_torch(layer, lambda a, b, c: op(op(a, b), c), a, b, c)
    assert layer.init(jax.random.key(0), ((3, 4, 4), (3, 1, 1)))[0] == (3, 4, 4)


@pytest.mark.slow
def test_a_projection_shortcut_block_equals_torchs():
    """A ResNet basic block with a projection shortcut, lamina layers only."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(6)
            self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(6)
            self.down = nn.Sequential(nn.Conv2d(3, 6, 1, stride=2, bias=False), nn.BatchNorm2d(6))

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(y + self.down(x))

    torch.manual_seed(0)
    ref = Block().eval()
    for bn in (ref.bn1, ref.bn2, ref.down[1]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    block = lm.serial(
        lm.parallel(
            lm.serial(lm.Conv(6, 3, stride=2, padding=1, use_bias=False), lm.BatchNorm(),
                      lm.Activation("relu"), lm.Conv(6, 3, padding=1, use_bias=False),
                      lm.BatchNorm()),
            lm.serial(lm.Conv(6, 1, stride=2, use_bias=False), lm.BatchNorm()),
        ),
        lm.Add(),
        lm.Activation("relu"),
    )
    sd = ref.state_dict()
    # lamina's order of units: the main branch, then the shortcut.
    order = ["conv1", "bn1", "conv2", "bn2", "down.0", "down.1"]
    renamed = {f"{i}.{key[len(name) + 1:]}": value
               for i, name in enumerate(order) for key, value in sd.items()
               if key.startswith(name + ".")}
    params, state = lm.from_torch(renamed, like=(block, (3, 8, 8)))
    x = _normal(2, 3, 8, 8)
    y, _ = lm.forward(block)(params, x, state=state)
    with torch.no_grad():
        np.testing.assert_allclose(y, ref(torch.tensor(x)).numpy(), rtol=1e-5, atol=1e-5)


def test_merge_errors_name_the_layer():
    with pytest.raises(ValueError, match=r"Add\(\): inputs must have the same number of axes, got "
                                         r"shapes \[\(3, 4\), \(4,\)\]"):
        lm.Add().init(jax.random.key(0), ((3, 4), (4,)))
    with pytest.raises(ValueError, match=r"Multiply\(\): shapes \[\(3,\), \(4,\)\] differ on axis 0"):
        lm.Multiply().init(jax.random.key(0), ((3,), (4,)))
    with pytest.raises(ValueError, match=r"Add\(\): expects a tuple of inputs \(e.g. from "
                                         r"lm.parallel\), got input shape \(3,\)"):
        lm.Add().init(jax.random.key(0), (3,))
    with pytest.raises(TypeError, match=r"Add\(\): expects a tuple of arrays"):
        lm.Add().apply((), jnp.ones(3))


# --- Upsample -------------------------------------------------------------------

UPSAMPLE = [
    # (lamina kwargs, torch kwargs, example shape)
    ({"scale_factor": 2}, {"scale_factor": 2}, (2, 5)),
    ({"scale_factor": 2}, {"scale_factor": 2}, (2, 3, 4)),
    ({"scale_factor": 3}, {"scale_factor": 3}, (1, 2, 3, 2)),
    ({"scale_factor": 1.5}, {"scale_factor": 1.5}, (2, 5, 3)),
    ({"scale_factor": (2, 3)}, {"scale_factor": (2.0, 3.0)}, (2, 3, 2)),
    ({"size": (7, 5)}, {"size": (7, 5)}, (2, 3, 4)),
    ({"scale_factor": 0.5}, {"scale_factor": 0.5}, (2, 6, 7)),
    ({"scale_factor": 2, "mode": "linear"}, {"scale_factor": 2, "mode": "linear"}, (2, 5)),
    ({"scale_factor": 2, "mode": "bilinear"}, {"scale_factor": 2, "mode": "bilinear"}, (2, 3, 4)),
    ({"scale_factor": 1.7, "mode": "bilinear"}, {"scale_factor": 1.7, "mode": "bilinear"}, (2, 5, 3)),
    ({"size": (5, 9), "mode": "bilinear"}, {"size": (5, 9), "mode": "bilinear"}, (2, 3, 4)),
    ({"scale_factor": 0.6, "mode": "bilinear"}, {"scale_factor": 0.6, "mode": "bilinear"}, (1, 7, 6)),
    ({"scale_factor": 2, "mode": "trilinear"}, {"scale_factor": 2, "mode": "trilinear"}, (2, 2, 3, 2)),
]


@pytest.mark.slow
@pytest.mark.parametrize("ours, theirs, shape", UPSAMPLE,
                         ids=[f"{o}-{'x'.join(map(str, s))}" for o, _, s in UPSAMPLE])
def test_upsample_equals_torch(ours, theirs, shape):
    layer = lm.Upsample(**ours)
    module = nn.Upsample(**theirs)
    x = _normal(3, *shape)
    assert layer.init(jax.random.key(0), shape)[0] == tuple(module(torch.tensor(x)).shape[1:])
    _against_torch(layer, module, x)


def test_upsample_errors():
    with pytest.raises(ValueError, match=r"Upsample: give exactly one of scale_factor and size"):
        lm.Upsample()
    with pytest.raises(ValueError, match=r"Upsample: mode must be one of 'nearest', 'linear', "
                                         r"'bilinear', 'trilinear', got 'cubic'"):
        lm.Upsample(2, mode="cubic")
    with pytest.raises(ValueError, match=r"scale_factor must be finite and > 0, got 0"):
        lm.Upsample(0)
    with pytest.raises(ValueError, match=r"must agree on the number of spatial axes"):
        lm.Upsample((2, 2), mode="trilinear")
    with pytest.raises(ValueError, match=r"expected one channels-first example of shape \(C, H, W\), "
                                         r"got input_shape \(2, 5\)"):
        lm.Upsample(2, mode="bilinear").init(jax.random.key(0), (2, 5))


# --- Reshape, Permute, Identity on tuples --------------------------------------------

def test_reshape_and_permute_equal_torchs_view_and_permute():
    x = _normal(2, 3, 4, 5)
    _against_torch(lm.Reshape((4, -1)), lambda t: t.reshape(2, 4, -1), x)
    _against_torch(lm.Permute((1, 2, 0)), lambda t: t.permute(0, 2, 3, 1), x)
    model = lm.serial(lm.Permute((2, 0, 1)), lm.Reshape((-1,)), lm.Dense(3))
    out, params = model.init(jax.random.key(0), (3, 4, 5))
    assert out == (3,) and params[2]["W"].shape == (3, 60)


def test_reshape_and_permute_errors():
    with pytest.raises(ValueError, match=r"Reshape\(\(5, -1\)\): cannot reshape an example of shape "
                                         r"\(3, 4\) \(12 values\) to \(5, -1\): 12 is not a multiple of 5"):
        lm.Reshape((5, -1)).init(jax.random.key(0), (3, 4))
    with pytest.raises(ValueError, match=r"at most one -1"):
        lm.Reshape((-1, -1))
    with pytest.raises(ValueError, match=r"Permute: dims must be a permutation of 0..2 \(the axes "
                                         r"of one example, no batch axis\), got \(0, 1, 3\)"):
        lm.Permute((0, 1, 3))
    with pytest.raises(ValueError, match=r"dims \(1, 0\) permute 2 axes, but one example has shape "
                                         r"\(2, 3, 4\)"):
        lm.Permute((1, 0)).init(jax.random.key(0), (2, 3, 4))


def test_identity_passes_a_tuple_through():
    model = lm.serial(lm.parallel(lm.Dense(3), lm.Dense(3)), lm.Identity(), lm.Add())
    out, params = model.init(jax.random.key(0), (4,))
    x = _normal(4)
    want = (np.asarray(params[0][0]["W"]) @ x + params[0][0]["b"]
            + np.asarray(params[0][1]["W"]) @ x + params[0][1]["b"])
    np.testing.assert_allclose(model.apply(params, x), want, rtol=1e-5, atol=1e-6)


# --- AdaptiveAvgPool, pooling and padding options -------------------------------------

ADAPTIVE = [(3, (2, 7)), (4, (2, 10)), ((2, 3), (2, 5, 7)), (1, (3, 4, 4)), (3, (1, 5, 4, 7))]


@pytest.mark.slow
@pytest.mark.parametrize("size, shape", ADAPTIVE)
def test_adaptive_avg_pool_equals_torch(size, shape):
    module = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)[len(shape) - 2](size)
    _against_torch(lm.AdaptiveAvgPool(size), module, _normal(2, *shape))


POOL_OPTIONS = [
    # (window, stride, padding, ceil_mode, count_include_pad, divisor_override, example shape)
    (3, 2, 1, True, True, None, (2, 6, 7)),
    (3, 2, 1, True, False, None, (2, 6, 7)),
    (2, 2, 0, True, True, None, (2, 5, 5)),
    (3, 2, 0, True, True, None, (2, 8)),
    (2, 3, 1, True, False, None, (2, 7, 4, 5)),
    (3, 1, 1, False, False, None, (2, 5, 4)),
    (3, 2, 1, False, True, 4, (2, 6, 6)),
]


@pytest.mark.slow
@pytest.mark.parametrize("k, s, p, ceil, include, divisor, shape", POOL_OPTIONS)
def test_pooling_options_equal_torch(k, s, p, ceil, include, divisor, shape):
    n = len(shape) - 1
    x = _normal(2, *shape)
    avg = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[n - 1]
    extra = {} if divisor is None else {"divisor_override": divisor}  # not in AvgPool1d
    _against_torch(lm.AvgPool(k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=include,
                              **extra),
                   avg(k, s, p, ceil_mode=ceil, count_include_pad=include, **extra), x)
    mx = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[n - 1]
    _against_torch(lm.MaxPool(k, stride=s, padding=p, ceil_mode=ceil), mx(k, s, p, ceil_mode=ceil), x)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding, shape", [(2, (3, 6)), (1, (3, 5, 4)), ("same", (3, 5, 6)),
                                            ((1, 0, 2), (3, 3, 4, 5))])
def test_conv_padding_modes_equal_torch(mode, padding, shape):
    n = len(shape) - 1
    torch.manual_seed(0)
    module = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[n - 1](3, 4, 3, padding=padding, padding_mode=mode)
    layer = lm.Conv(4, (3,) * n, padding=padding, padding_mode=mode)
    params = lm.from_torch(module.state_dict(), like=(layer, shape))
    x = _normal(2, *shape)
    tx = torch.tensor(x, requires_grad=True)
    want = module(tx)
    want.sum().backward()
    fwd = lm.forward(layer)
    np.testing.assert_allclose(fwd(params, x), want.detach().numpy(), rtol=1e-5, atol=1e-5)
    grad = jax.grad(lambda a: fwd(params, a).sum())(x)
    np.testing.assert_allclose(grad, tx.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_option_errors():
    with pytest.raises(ValueError, match=r"padding_mode must be one of 'zeros', 'reflect', "
                                         r"'replicate', 'circular', got 'mirror'"):
        lm.Conv(2, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match=r"padding_mode='reflect' pads axis 1 by 3, but the input of "
                                         r"shape \(1, 3\) has only 3 there \(at most 2 can be padded\)"):
        lm.Conv(2, 3, padding=3, padding_mode="reflect").init(jax.random.key(0), (1, 3))
    with pytest.raises(TypeError, match=r"ceil_mode must be True or False"):
        lm.MaxPool(2, ceil_mode=1)
    with pytest.raises(ValueError, match=r"divisor_override must be"):
        lm.AvgPool(2, divisor_override=0)
    with pytest.raises(ValueError, match=r"AdaptiveAvgPool\(\(2, 2\)\): expected one channels-first "
                                         r"example of shape \(C, H, W\)"):
        lm.AdaptiveAvgPool((2, 2)).init(jax.random.key(0), (3, 4))


# --- one meaning for "gelu" ------------------------------------------------------------

def test_gelu_is_torchs_exact_gelu_in_every_layer_and_gelu_tanh_the_approximation():
    x = _normal(3, 7) * 3
    exact = nn.GELU()(torch.tensor(x)).numpy()
    tanh = nn.GELU(approximate="tanh")(torch.tensor(x)).numpy()
    assert np.abs(exact - tanh).max() > 1e-4  # the two differ visibly
    eye = {"W": jnp.eye(7), "b": jnp.zeros(7)}
    for act, want in (("gelu", exact), ("gelu_exact", exact), ("gelu_tanh", tanh), (jax.nn.gelu, tanh)):
        np.testing.assert_allclose(lm.forward(lm.Activation(act))((), x), want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(lm.forward(lm.Dense(7, act=act))(eye, x), want, rtol=1e-6, atol=1e-6)
    # Names are what a layer keeps: an alias and jax.nn.gelu are stored as the name they mean.
    assert lm.Dense(3, act="gelu_exact") == lm.Dense(3, act="gelu")
    assert lm.Dense(3, act=jax.nn.gelu) == lm.Dense(3, act="gelu_tanh")


def test_a_format_1_file_keeps_its_tanh_gelu(tmp_path):
    """Before format 2, Dense's "gelu" was the tanh form and the transformer layer's exact."""
    model = lm.serial(lm.Dense(4, act="gelu_tanh"), lm.TransformerEncoderLayer(2, 8, act="gelu"))
    _, params = model.init(jax.random.key(0), (3, 4))
    path = tmp_path / "m.safetensors"
    lm.save(path, params, model=model)
    # Rewrite the description as lamina 0.1 (format 1) wrote it.
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(path), "np") as f:
        metadata = dict(f.metadata())
    described = json.loads(metadata["lamina.model"])
    described["format"] = 1
    described["model"]["config"]["layers"]["tuple"][0]["config"]["act"] = "gelu"
    metadata["lamina.model"] = json.dumps(described)
    save_file(load_file(str(path)), str(path), metadata=metadata)
    loaded, _ = lm.load_model(path)
    assert loaded == model
