"""MaxPool, AvgPool and GlobalAvgPool against PyTorch's pooling modules."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import lamina as lm

WRAPS = pytest.mark.parametrize("wrap", [jax.jit, lambda f: f], ids=["jit", "eager"])
TORCH_POOL = {
    "MaxPool": {1: torch.nn.MaxPool1d, 2: torch.nn.MaxPool2d, 3: torch.nn.MaxPool3d},
    "AvgPool": {1: torch.nn.AvgPool1d, 2: torch.nn.AvgPool2d, 3: torch.nn.AvgPool3d},
}

CASES = [
    # (channels, spatial, window, keyword arguments)
    (2, (10,), 2, {}),
    (3, (11,), 3, {"stride": 2, "padding": 1}),
    (2, (9,), (4,), {"stride": (1,), "padding": (2,)}),
    (3, (8, 8), 2, {}),
    (2, (9, 7), (3, 2), {"stride": (2, 1), "padding": (1, 1)}),
    (2, (7, 7), 3, {"stride": 1, "padding": 1}),
    (2, (4, 6, 5), 2, {}),
    (2, (5, 5, 6), (3, 3, 2), {"stride": (2, 1, 2), "padding": (1, 0, 1)}),
]


@pytest.mark.slow
@WRAPS
@pytest.mark.parametrize("kind", ["MaxPool", "AvgPool"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_torch(kind, case, wrap):
    channels, spatial, window, kw = CASES[case]
    torch.manual_seed(case)
    # All negative: a zero from the padding would win a max and move a mean.
    xs = -1 - torch.rand(4, channels, *spatial)
    module = TORCH_POOL[kind][len(spatial)](window, **kw)
    with torch.no_grad():
        want = module(xs).numpy()
    layer = getattr(lm, kind)(window, **kw)
    out_shape, params = layer.init(jax.random.key(0), (channels, *spatial))
    assert out_shape == want.shape[1:] and params == ()
    got = wrap(jax.vmap(layer.apply, in_axes=(None, 0)))((), jnp.asarray(xs.numpy()))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        wrap(layer.apply)((), jnp.asarray(xs[0].numpy())), want[0], rtol=1e-5, atol=1e-5
    )


@WRAPS
@pytest.mark.parametrize("spatial", [(7,), (5, 6), (3, 4, 5)])
def test_global_avg_pool_matches_torch(spatial, wrap):
    torch.manual_seed(0)
    xs = torch.randn(4, 3, *spatial)
    adaptive = {1: torch.nn.AdaptiveAvgPool1d, 2: torch.nn.AdaptiveAvgPool2d,
                3: torch.nn.AdaptiveAvgPool3d}[len(spatial)]
    with torch.no_grad():
        want = torch.flatten(adaptive(1)(xs), 1).numpy()
    layer = lm.GlobalAvgPool()
    assert layer.init(jax.random.key(0), (3, *spatial)) == ((3,), ())
    got = wrap(jax.vmap(layer.apply, in_axes=(None, 0)))((), jnp.asarray(xs.numpy()))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "layer, shape",
    [
        (lm.MaxPool(2), (2, 6)),
        (lm.MaxPool((3, 2), stride=1, padding=(1, 0)), (2, 5, 4)),
        (lm.MaxPool(2), (2, 4, 4, 2)),
        (lm.AvgPool(3, stride=2, padding=1), (2, 7)),
        (lm.AvgPool(2), (2, 4, 6)),
        (lm.AvgPool((2, 1, 2), padding=(1, 0, 0)), (2, 3, 2, 4)),
        (lm.GlobalAvgPool(), (3, 5)),
        (lm.GlobalAvgPool(), (3, 4, 5)),
        (lm.GlobalAvgPool(), (3, 2, 3, 4)),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
@pytest.mark.slow
def test_check_layer(layer, shape):
    lm.testing.check_layer(layer, shape)


def test_summary_flops():
    assert lm.summary(lm.MaxPool(2), (3, 8, 8), show=False).flops == 3 * 4 * 4 * (4 - 1)
    assert lm.summary(lm.AvgPool(2), (3, 8, 8), show=False).flops == 3 * 4 * 4 * 4
    assert lm.summary(lm.AvgPool((2, 3), stride=1), (1, 4, 4), show=False).flops == 3 * 2 * 6
    assert lm.summary(lm.GlobalAvgPool(), (3, 8, 8), show=False).flops == 3 * 8 * 8


def test_configuration_values(tmp_path):
    assert lm.MaxPool(2) == lm.MaxPool(2) and hash(lm.MaxPool(2)) == hash(lm.MaxPool(2))
    assert lm.MaxPool(2) != lm.AvgPool(2) and lm.MaxPool(2) != lm.MaxPool(2, stride=1)
    assert lm.MaxPool([2, 2]) == lm.MaxPool((2, 2)) and lm.MaxPool([2, 2]).window == (2, 2)
    assert lm.AvgPool(np.int64(2), stride=np.int32(1)) == lm.AvgPool(2, stride=1)
    assert lm.GlobalAvgPool() == lm.GlobalAvgPool()
    layer = lm.MaxPool(3, stride=2, padding=1)
    assert repr(layer) == layer.name == "MaxPool(3, stride=2, padding=1)"
    assert repr(lm.AvgPool((2, 2))) == "AvgPool((2, 2))"
    assert repr(lm.GlobalAvgPool()) == lm.GlobalAvgPool().name == "GlobalAvgPool()"
    for value in (layer, lm.AvgPool((2, 3), padding=(1, 1)), lm.GlobalAvgPool()):
        assert pickle.loads(pickle.dumps(value)) == value
        assert type(value).from_config(value.config()) == value
    assert layer.replace(stride=None) == lm.MaxPool(3, padding=1)
    model = lm.serial(lm.Conv(2, 3), lm.MaxPool((2, 2)), lm.AvgPool(1), lm.GlobalAvgPool())
    _, params = model.init(jax.random.key(0), (1, 8, 8))
    lm.save(tmp_path / "m.safetensors", params, model=model)
    rebuilt, _ = lm.load_model(tmp_path / "m.safetensors")
    assert rebuilt == model and rebuilt.layers[1].window == (2, 2)


@pytest.mark.parametrize("kind", ["MaxPool", "AvgPool"])
@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        ((0,), {}, ValueError, r"^{}: window must be >= 1, got 0"),
        ((2.5,), {}, TypeError, r"^{}: window must be an int or a tuple of 1 to 3 ints"),
        (((2, 2, 2, 2),), {}, ValueError, r"window must be .*1 to 3.*got \(2, 2, 2, 2\)"),
        ((2,), {"stride": 0}, ValueError, r"stride must be >= 1, got 0"),
        ((2,), {"stride": "2"}, TypeError, r"stride must be an int or a tuple"),
        ((2,), {"padding": -1}, ValueError, r"padding must be >= 0, got -1"),
        ((2,), {"padding": 2}, ValueError,
         r"^{}: padding must be at most half the window, as in torch; got padding=2, window=2"),
        (((3, 4),), {"padding": (1, 3)}, ValueError, r"at most half the window"),
        (((2, 2),), {"stride": (1, 1, 1)}, ValueError,
         r"one entry per spatial axis.*window=\(2, 2\), stride=\(1, 1, 1\)"),
    ],
)
def test_configuration_errors(kind, args, kwargs, error, message):
    with pytest.raises(error, match=message.replace("{}", kind)) as info:
        getattr(lm, kind)(*args, **kwargs)
    assert isinstance(info.value, lm.LaminaError)


@WRAPS
@pytest.mark.parametrize("kind", ["MaxPool", "AvgPool"])
def test_shape_errors(kind, wrap):
    layer = getattr(lm, kind)(2)
    with pytest.raises(ValueError, match=(
        rf"^{kind}\(2\): expected one channels-first example of shape \(C, L\), \(C, H, W\) "
        r"or \(C, D, H, W\), got input_shape \(4,\)$"
    )):
        layer.init(jax.random.key(0), (4,))
    with pytest.raises(ValueError, match=r"got input_shape \(8, 1, 4, 4, 4\)\nLayers take one example"):
        layer.init(jax.random.key(0), (8, 1, 4, 4, 4))
    with pytest.raises(ValueError, match=r"shape \(C, H, W\), got input_shape \(3, 8\)$"):
        getattr(lm, kind)((2, 2)).init(jax.random.key(0), (3, 8))
    with pytest.raises(ValueError, match=(
        rf"^{kind}\(3\): the input of shape \(1, 2, 5\) is too small: the output would have "
        r"size 0 along axis 1 \(the padded input must be at least as large as the window\)"
    )):
        getattr(lm, kind)(3).init(jax.random.key(0), (1, 2, 5))
    apply = wrap(layer.apply)
    with pytest.raises(TypeError, match=rf"^{kind}\(2\): expected a floating-point input, got x of dtype int32"):
        apply((), jnp.ones((2, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"got x with shape \(4,\)"):
        apply((), jnp.ones(4))
    with pytest.raises(ValueError, match=r"input of shape \(2, 1\) is too small"):
        apply((), jnp.ones((2, 1)))


def test_global_avg_pool_errors():
    layer = lm.GlobalAvgPool()
    with pytest.raises(ValueError, match=r"^GlobalAvgPool\(\): expected one channels-first example"):
        layer.init(jax.random.key(0), (5,))
    with pytest.raises(ValueError, match=r"got x with shape \(\)"):
        layer.apply((), jnp.float32(1.0))
    with pytest.raises(TypeError, match=r"expected a floating-point input"):
        layer.apply((), jnp.ones((2, 3), jnp.int32))


def test_errors_name_the_path():
    model = lm.serial(lm.Conv(2, 3), lm.MaxPool(4))
    with pytest.raises(ValueError, match=r"^serial\[1\] MaxPool\(4\): the input of shape \(2, 3, 3\)"):
        model.init(jax.random.key(0), (1, 5, 5))


@pytest.mark.slow
@pytest.mark.parametrize("layer", [lm.MaxPool(2), lm.AvgPool(2), lm.MaxPool(3, stride=2, padding=1),
                                   lm.AvgPool(3, padding=1), lm.GlobalAvgPool()], ids=repr)
def test_pools_differentiate_under_jit(layer):
    # reduce_window needs a concrete initial value to have a gradient under jit.
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6)), jnp.float32)
    loss = lambda x: jnp.sum(layer.apply((), x) ** 2)  # noqa: E731
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(x), jax.grad(loss)(x), rtol=1e-6)
    if isinstance(layer, lm.MaxPool) and layer.padding == 0:
        # d/dx sum(max^2) = 2 max at each window's argmax, 0 elsewhere.
        y = np.asarray(layer.apply((), x))
        g = np.asarray(jax.jit(jax.grad(loss))(x))
        assert np.count_nonzero(g) == y.size
        np.testing.assert_allclose(np.sort(g[g != 0]), np.sort(2 * y.ravel()), rtol=1e-6)
