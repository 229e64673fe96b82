"""Conv and ConvTranspose against PyTorch's nn.ConvNd and nn.ConvTransposeNd."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import lamina as lm

# torch's own note that it pads a copy for "same" with an even kernel
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

WRAPS = pytest.mark.parametrize("wrap", [jax.jit, lambda f: f], ids=["jit", "eager"])
TORCH_ACT = {None: lambda t: t, "relu": torch.relu, "tanh": torch.tanh}
TORCH_CONV = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}
TORCH_CONV_T = {
    1: torch.nn.ConvTranspose1d, 2: torch.nn.ConvTranspose2d, 3: torch.nn.ConvTranspose3d
}


def torch_kwargs(kw):
    """lamina's keyword arguments as torch's (`bias` for `use_bias`, no `act`)."""
    kw = {k: v for k, v in kw.items() if k != "act"}
    if "use_bias" in kw:
        kw["bias"] = kw.pop("use_bias")
    return kw


def params_of(module):
    """A torch module's weights as lamina params, copied as they are."""
    params = {"W": jnp.asarray(module.weight.detach().numpy())}
    if module.bias is not None:
        params["b"] = jnp.asarray(module.bias.detach().numpy())
    return params


def compare_with_torch(layer, module, act, in_channels, spatial, wrap, seed):
    torch.manual_seed(seed)
    xs = torch.randn(4, in_channels, *spatial)
    with torch.no_grad():
        want = TORCH_ACT[act](module(xs)).numpy()
    params = params_of(module)
    out_shape, init_params = layer.init(jax.random.key(0), (in_channels, *spatial))
    assert out_shape == want.shape[1:]
    assert jax.tree.map(jnp.shape, init_params) == jax.tree.map(jnp.shape, params)
    batched = wrap(jax.vmap(layer.apply, in_axes=(None, 0)))
    np.testing.assert_allclose(batched(params, jnp.asarray(xs.numpy())), want, rtol=1e-5, atol=1e-5)
    # one example on its own, as the contract has it
    np.testing.assert_allclose(
        wrap(layer.apply)(params, jnp.asarray(xs[0].numpy())), want[0], rtol=1e-5, atol=1e-5
    )


CONV_CASES = [
    # (in_channels, spatial, out_channels, kernel_size, keyword arguments)
    (3, (11,), 4, 3, {}),
    (4, (12,), 6, 4, {"padding": "same", "dilation": 2}),  # even kernel: extra pad right
    (4, (13,), 8, (5,), {"stride": 2, "padding": (2,), "groups": 2, "use_bias": False}),
    (2, (9,), 3, 2, {"padding": "valid", "act": "relu"}),
    (3, (8, 9), 5, 3, {"padding": 1}),
    (4, (10, 7), 4, (2, 3), {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2)}),
    (6, (8, 8), 6, 3, {"groups": 6, "padding": "same", "act": "tanh"}),  # depthwise
    (4, (9, 9), 8, 4, {"padding": "same"}),
    (2, (7, 7), 3, 3, {"stride": 3, "use_bias": False}),
    (2, (5, 6, 7), 3, 3, {}),
    (4, (6, 6, 6), 4, (2, 3, 2), {"padding": "same", "groups": 2}),
    (3, (7, 5, 6), 2, 3, {"stride": (2, 1, 2), "padding": (1, 1, 0), "dilation": (1, 2, 1),
                          "act": "relu"}),
]

CONV_T_CASES = [
    (3, (7,), 4, 3, {}),
    (4, (6,), 6, 4, {"stride": 2, "padding": 1, "output_padding": 1, "groups": 2}),
    (2, (9,), 3, 3, {"padding": 4}),  # more padding than the kernel: the output is cropped
    (3, (5, 6), 4, 3, {"stride": 2, "padding": 1, "output_padding": 1, "act": "relu"}),
    (4, (4, 5), 6, (2, 3), {"stride": (2, 3), "dilation": (2, 1), "output_padding": (1, 2),
                            "groups": 2, "use_bias": False}),
    (2, (6, 6), 2, 4, {"stride": 2, "padding": 1}),
    (4, (5, 5), 4, 3, {"dilation": 2, "output_padding": 1, "padding": (2, 1), "act": "tanh"}),
    (2, (3, 4, 3), 3, 3, {"stride": 2}),
    (4, (3, 3, 4), 4, (2, 2, 3), {"stride": (1, 2, 2), "padding": (0, 1, 1),
                                  "output_padding": (0, 1, 0), "groups": 4}),
]


@pytest.mark.slow
@WRAPS
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_conv_matches_torch(case, wrap):
    c_in, spatial, c_out, kernel, kw = CONV_CASES[case]
    torch.manual_seed(case)
    module = TORCH_CONV[len(spatial)](c_in, c_out, kernel, **torch_kwargs(kw))
    layer = lm.Conv(c_out, kernel, **kw)
    compare_with_torch(layer, module, kw.get("act"), c_in, spatial, wrap, 100 + case)


@pytest.mark.slow
@WRAPS
@pytest.mark.parametrize("case", range(len(CONV_T_CASES)))
def test_conv_transpose_matches_torch(case, wrap):
    c_in, spatial, c_out, kernel, kw = CONV_T_CASES[case]
    torch.manual_seed(case)
    module = TORCH_CONV_T[len(spatial)](c_in, c_out, kernel, **torch_kwargs(kw))
    layer = lm.ConvTranspose(c_out, kernel, **kw)
    compare_with_torch(layer, module, kw.get("act"), c_in, spatial, wrap, 200 + case)


def assert_uniform(a, bound):
    """`a` looks drawn uniformly from [-bound, bound]: range, mean and variance."""
    a = np.asarray(a, np.float64).ravel()
    assert a.min() >= -bound and a.max() <= bound
    assert np.abs(a).max() > 0.99 * bound
    assert abs(a.mean()) < 4 * bound / np.sqrt(3 * a.size)
    np.testing.assert_allclose(a.var(), bound**2 / 3, rtol=0.05)


@pytest.mark.parametrize("transposed", [False, True], ids=["Conv", "ConvTranspose"])
def test_default_init_is_torchs(transposed):
    # torch: W ~ U(+-1/sqrt(fan_in)) by kaiming_uniform_(a=sqrt(5)), b likewise,
    # with fan_in = weight.shape[1] * prod(kernel) in both layouts.
    torch.manual_seed(0)
    if transposed:
        layer, shape = lm.ConvTranspose(64, 3, groups=2), (128, 5, 5)
        module = torch.nn.ConvTranspose2d(128, 64, 3, groups=2)
        fan_in = 64 // 2 * 9
        bias_layer, bias_shape = lm.ConvTranspose(4096, 2, groups=4), (8, 3)
        bias_module = torch.nn.ConvTranspose1d(8, 4096, 2, groups=4)
        bias_fan_in = 4096 // 4 * 2
    else:
        layer, shape = lm.Conv(64, 3, groups=2), (128, 5, 5)
        module = torch.nn.Conv2d(128, 64, 3, groups=2)
        fan_in = 128 // 2 * 9
        bias_layer, bias_shape = lm.Conv(4096, 2), (3, 4)
        bias_module = torch.nn.Conv1d(3, 4096, 2)
        bias_fan_in = 3 * 2
    _, params = layer.init(jax.random.key(1), shape)
    assert params["W"].shape == tuple(module.weight.shape)
    assert_uniform(params["W"], 1 / np.sqrt(fan_in))
    assert_uniform(module.weight.detach().numpy(), 1 / np.sqrt(fan_in))  # the closed form is torch's
    _, params = bias_layer.init(jax.random.key(2), bias_shape)
    assert_uniform(params["b"], 1 / np.sqrt(bias_fan_in))
    assert_uniform(bias_module.bias.detach().numpy(), 1 / np.sqrt(bias_fan_in))


def test_custom_and_jax_initializers(key):
    layer = lm.Conv(2, 3, w_init=lm.initializers.ones, b_init=lm.initializers.constant(0.5))
    _, params = layer.init(key, (4, 6))
    np.testing.assert_array_equal(params["W"], np.ones((2, 4, 3)))
    np.testing.assert_array_equal(params["b"], np.full(2, 0.5))
    # A jax.nn initializer reads fan_in from the Flax layout; init_weight
    # hands it that layout, so he_normal gives 2 / (in * prod(kernel)).
    _, params = lm.Conv(256, 3, w_init=jax.nn.initializers.he_normal()).init(key, (16, 8, 8))
    np.testing.assert_allclose(float(jnp.var(params["W"])), 2 / (16 * 9), rtol=0.05)


@pytest.mark.parametrize(
    "layer, shape",
    [
        (lm.Conv(3, 3, act="tanh"), (2, 7)),
        (lm.Conv(4, (2, 3), stride=2, padding=(1, 0), groups=2), (2, 6, 7)),
        (lm.Conv(2, 2, padding="same", dilation=2), (2, 4, 3, 4)),
        (lm.ConvTranspose(3, 3, stride=2, output_padding=1), (2, 5)),
        (lm.ConvTranspose(4, (2, 3), stride=(2, 1), padding=(0, 1), groups=2), (2, 3, 4)),
        (lm.ConvTranspose(2, 2, stride=2, use_bias=False), (3, 2, 3, 2)),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
@pytest.mark.slow
def test_check_layer(layer, shape):
    lm.testing.check_layer(layer, shape)


@pytest.mark.slow
def test_trace_holds_the_pre_activation(key):
    model = lm.serial(lm.Conv(3, 3, padding=1, act="relu"), lm.ConvTranspose(2, 2, act="tanh"))
    _, params = model.init(key, (2, 5, 5))
    x = jax.random.normal(jax.random.key(1), (2, 5, 5))
    steps = lm.trace(model, params, x)
    z0 = lm.Conv(3, 3, padding=1).apply(params[0], x)
    z1 = lm.ConvTranspose(2, 2).apply(params[1], steps[0].output)
    np.testing.assert_allclose(steps[0].weighted_sum, z0, rtol=1e-6)
    np.testing.assert_allclose(steps[1].weighted_sum, z1, rtol=1e-6)
    assert [s.act for s in steps] == ["relu", "tanh"]
    np.testing.assert_allclose(steps[1].output, model.apply(params, x), rtol=1e-6)


def test_summary_flops_are_the_closed_form():
    s = lm.summary(lm.Conv(16, 3, padding=1), (3, 32, 32), show=False)
    assert s.flops == 2 * (32 * 32) * 16 * 3 * 9 + 16 * 32 * 32
    assert s.params == 16 * 3 * 9 + 16
    # out 8x8 positions; 4 channels in each of 2 groups
    s = lm.summary(lm.Conv(6, (3, 3), stride=2, groups=2, use_bias=False), (8, 17, 17), show=False)
    assert s.flops == 2 * (8 * 8) * 6 * (8 // 2) * 9
    # each of the 5*5 input positions times every weight; bias on 4x11x11 outputs
    s = lm.summary(lm.ConvTranspose(4, 3, stride=2), (6, 5, 5), show=False)
    assert s.flops == 2 * (5 * 5) * 6 * 4 * 9 + 4 * 11 * 11


def test_configuration_values(tmp_path):
    assert lm.Conv(8, 3) == lm.Conv(8, 3) and hash(lm.Conv(8, 3)) == hash(lm.Conv(8, 3))
    assert lm.Conv(8, [3, 3]) == lm.Conv(8, (3, 3)) and lm.Conv(8, [3, 3]).kernel_size == (3, 3)
    assert lm.Conv(8, np.int64(3), stride=np.int32(2)) == lm.Conv(8, 3, stride=2)
    assert type(lm.Conv(8, np.int64(3)).kernel_size) is int
    assert lm.Conv(8, 3, act=jax.nn.relu) == lm.Conv(8, 3, act="relu")
    assert lm.Conv(8, 3) != lm.Conv(8, 3, stride=2)
    assert lm.Conv(8, 3) != lm.ConvTranspose(8, 3)
    layer = lm.Conv(8, (3, 3), stride=(2, 1), padding=1, groups=2, act="relu", use_bias=False)
    assert repr(layer) == (
        "Conv(8, (3, 3), stride=(2, 1), padding=1, groups=2, act='relu', use_bias=False)"
    )
    assert layer.name == "Conv(8, (3, 3), relu)"
    assert repr(lm.Conv(8, 3, padding="same")) == "Conv(8, 3, padding='same')"
    t = lm.ConvTranspose(4, 2, stride=2, output_padding=1)
    assert repr(t) == "ConvTranspose(4, 2, stride=2, output_padding=1)"
    assert t.name == "ConvTranspose(4, 2)"
    for value in (layer, t):
        assert pickle.loads(pickle.dumps(value)) == value
        assert hash(pickle.loads(pickle.dumps(value))) == hash(value)
        assert type(value).from_config(value.config()) == value
    assert layer.replace(stride=1) == lm.Conv(8, (3, 3), padding=1, groups=2, act="relu",
                                              use_bias=False)
    # A checkpoint records the configuration as JSON, where tuples are lists.
    model = lm.serial(layer, t)
    _, params = model.init(jax.random.key(0), (4, 9, 9))
    lm.save(tmp_path / "cnn.safetensors", params, model=model)
    rebuilt, _ = lm.load_model(tmp_path / "cnn.safetensors")
    assert rebuilt == model and rebuilt.layers[0].kernel_size == (3, 3)


def test_torch_cnn_maps_layer_by_layer_with_weights_as_they_are(key):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 10),
    )
    model = lm.serial(
        lm.Conv(4, 3, padding=1, act="relu"), lm.MaxPool(2), lm.Flatten(), lm.Dense(10)
    )
    out_shape, init_params = model.init(key, (1, 8, 8))
    assert out_shape == (10,)
    conv, linear = net[0], net[4]
    params = (
        {"W": jnp.asarray(conv.weight.detach().numpy()), "b": jnp.asarray(conv.bias.detach().numpy())},
        (),
        (),
        {"W": jnp.asarray(linear.weight.detach().numpy()),
         "b": jnp.asarray(linear.bias.detach().numpy())},
    )
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, init_params)
    xs = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        want = net(xs).numpy()
    got = lm.forward(model)(params, jnp.asarray(xs.numpy()))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: lm.Conv(0, 3), ValueError, r"^Conv: out_channels must be >= 1, got 0"),
        (lambda: lm.Conv(2.0, 3), TypeError, r"^Conv: out_channels must be an int, got float 2.0"),
        (lambda: lm.Conv(8, 0), ValueError, r"^Conv\(8\): kernel_size must be >= 1, got 0"),
        (lambda: lm.Conv(8, 3.0), TypeError, r"kernel_size must be an int or a tuple of 1 to 3 ints"),
        (lambda: lm.Conv(8, (3, 3, 3, 3)), ValueError, r"kernel_size must be .*1 to 3.*\(3, 3, 3, 3\)"),
        (lambda: lm.Conv(8, ()), ValueError, r"kernel_size must be .*got \(\)"),
        (lambda: lm.Conv(8, (3, "3")), TypeError, r"kernel_size .* got tuple \(3, '3'\)"),
        (lambda: lm.Conv(8, 3, stride=0), ValueError, r"stride must be >= 1, got 0"),
        (lambda: lm.Conv(8, 3, padding=-1), ValueError, r"padding must be >= 0, got -1"),
        (lambda: lm.Conv(8, 3, padding=(1, -1)), ValueError, r"padding must be >= 0, got \(1, -1\)"),
        (lambda: lm.Conv(8, 3, padding="full"), ValueError, r"'same' or 'valid', got 'full'"),
        (lambda: lm.Conv(8, 3, padding="same", stride=2), ValueError,
         r"^Conv\(8, 3\): padding='same' is not supported for strided convolutions \(stride=2\)"),
        (lambda: lm.Conv(8, 3, padding="same", stride=(1, 2)), ValueError, r"strided"),
        (lambda: lm.Conv(8, 3, dilation=0), ValueError, r"dilation must be >= 1, got 0"),
        (lambda: lm.Conv(8, (3, 3), stride=(1, 1, 1)), ValueError,
         r"one entry per spatial axis.*kernel_size=\(3, 3\), stride=\(1, 1, 1\)"),
        (lambda: lm.Conv(8, 3, groups=3), ValueError, r"out_channels=8 must be divisible by groups=3"),
        (lambda: lm.Conv(8, 3, groups=0), ValueError, r"groups must be >= 1, got 0"),
        (lambda: lm.Conv(8, 3, groups=2.0), TypeError, r"groups must be an int, got float 2.0"),
        (lambda: lm.Conv(8, 3, act="relux"), ValueError, r"Conv\(8\): unknown activation 'relux'"),
        (lambda: lm.Conv(8, 3, use_bias="yes"), TypeError, r"use_bias must be True or False"),
        (lambda: lm.Conv(8, 3, w_init="he"), TypeError, r"w_init must be an initializer"),
        (lambda: lm.ConvTranspose(8, 3, padding="same"), ValueError,
         r"^ConvTranspose\(8\): padding must be an int or a tuple of ints, got 'same'"),
        (lambda: lm.ConvTranspose(8, 3, output_padding=1), ValueError,
         r"output_padding must be smaller than either stride or dilation.*output_padding=1, "
         r"stride=1, dilation=1"),
        (lambda: lm.ConvTranspose(8, (3, 3), stride=2, output_padding=(1, 2)), ValueError,
         r"output_padding must be smaller"),
        (lambda: lm.ConvTranspose(8, 3, groups=3), ValueError, r"divisible by groups=3"),
    ],
)
def test_configuration_errors(make, error, message):
    with pytest.raises(error, match=message) as info:
        make()
    assert isinstance(info.value, lm.LaminaError)


def test_init_errors(key):
    with pytest.raises(TypeError, match=r"Conv\(8, 3\): expected a PRNG key"):
        lm.Conv(8, 3).init(0, (3, 8))
    with pytest.raises(ValueError, match=(
        r"^Conv\(8, 3\): expected one channels-first example of shape \(C, L\), \(C, H, W\) "
        r"or \(C, D, H, W\), got input_shape \(3,\)$"
    )):
        lm.Conv(8, 3).init(key, (3,))
    with pytest.raises(ValueError, match=r"got input_shape \(2, 3, 4, 5, 6\)\nLayers take one example"):
        lm.Conv(8, 3).init(key, (2, 3, 4, 5, 6))
    with pytest.raises(ValueError, match=r"of shape \(C, H, W\), got input_shape \(3, 10\)$"):
        lm.Conv(8, (3, 3)).init(key, (3, 10))
    with pytest.raises(ValueError, match=(
        r"^Conv\(8, 3\): got input_shape \(3, 8, 8\): its 3 channels must be divisible by groups=2"
    )):
        lm.Conv(8, 3, groups=2).init(key, (3, 8, 8))
    with pytest.raises(ValueError, match=(
        r"^Conv\(8, 5\): the input of shape \(3, 4, 9\) is too small: the output would have "
        r"size 0 along axis 1 \(the padded input must be at least as large as the dilated kernel"
    )):
        lm.Conv(8, 5).init(key, (3, 4, 9))
    with pytest.raises(ValueError, match=r"too small.*size -1 along axis 1"):
        lm.Conv(8, 3, dilation=3).init(key, (3, 5))
    with pytest.raises(ValueError, match=(
        r"^ConvTranspose\(2, 3\): the input of shape \(1, 2\) is too small: the output would "
        r"have size -6 along axis 1 \(\(n - 1\) \* stride - 2 \* padding"
    )):
        lm.ConvTranspose(2, 3, padding=5).init(key, (1, 2))


@WRAPS
def test_apply_errors(key, wrap):
    layer = lm.Conv(4, 3)
    _, params = layer.init(key, (3, 8, 8))
    x = jnp.ones((3, 8, 8))
    apply = wrap(layer.apply)
    cases = [
        (params, jnp.ones((3, 8, 8), jnp.int32), TypeError,
         r"^Conv\(4, 3\): expected a floating-point input, got x of dtype int32"),
        ([params["W"]], x, TypeError, r"expected params \{'W': \(out, in // groups, \*kernel\)"),
        ({"b": params["b"]}, x, ValueError, r"got a dict with keys \['b'\]"),
        ({**params, "c": params["b"]}, x, ValueError, r"unexpected params keys \['c'\]"),
        (params, jnp.ones((4, 8, 8)), ValueError,
         r"^Conv\(4, 3\): expected input with 3 channels \(W has shape \(4, 3, 3, 3\), layout "
         r"\(out, in // groups, \*kernel\), groups=1\), got x with shape \(4, 8, 8\)"),
        (params, jnp.ones((2, 3, 8, 8)), ValueError,
         r"expected one channels-first example of shape \(C, H, W\), got x with shape "
         r"\(2, 3, 8, 8\)\nLayers take one example; use jax.vmap"),
        ({**params, "W": params["W"][..., :2]}, x, ValueError,
         r"expected W of shape \(4, 3, 3, 3\) \(out, in // groups, \*kernel\) for x of shape "
         r"\(3, 8, 8\), got \(4, 3, 3, 2\)"),
        ({"W": params["W"]}, x, ValueError, r"no bias 'b' but the layer was built with use_bias=True"),
        ({**params, "b": jnp.ones(5)}, x, ValueError, r"expected b of shape \(4,\), got \(5,\)"),
        (params, jnp.ones((3, 2, 8)), ValueError, r"the input of shape \(3, 2, 8\) is too small"),
    ]
    for p, xx, error, message in cases:
        with pytest.raises(error, match=message):
            apply(p, xx)
    _, params = lm.Conv(4, 3, use_bias=False).init(key, (3, 8, 8))
    with pytest.raises(ValueError, match=r"hold a bias 'b' but the layer was built with use_bias=False"):
        wrap(lm.Conv(4, 3, use_bias=False).apply)({**params, "b": jnp.ones(4)}, x)
    # groups: the channel count must split, and ConvTranspose reads it from W's axis 0.
    _, params = lm.Conv(4, 3, groups=2).init(key, (6, 8, 8))
    with pytest.raises(ValueError, match=r"its 5 channels must be divisible by groups=2"):
        wrap(lm.Conv(4, 3, groups=2).apply)(params, jnp.ones((5, 8, 8)))
    with pytest.raises(ValueError, match=r"expected input with 6 channels \(W has shape \(4, 3, 3, 3\)"):
        wrap(lm.Conv(4, 3, groups=2).apply)(params, jnp.ones((4, 8, 8)))
    t = lm.ConvTranspose(4, 2)
    _, params = t.init(key, (3, 5))
    with pytest.raises(ValueError, match=(
        r"^ConvTranspose\(4, 2\): expected input with 3 channels \(W has shape \(3, 4, 2\), "
        r"layout \(in, out // groups, \*kernel\)"
    )):
        wrap(t.apply)(params, jnp.ones((2, 5)))


def test_errors_name_the_path(key):
    model = lm.serial(lm.Dense(4), lm.Conv(4, 3))
    with pytest.raises(ValueError, match=r"^serial\[1\] Conv\(4, 3\): expected one channels-first"):
        model.init(key, (8,))
