"""RMSNorm and GroupNorm against torch.nn.RMSNorm and torch.nn.GroupNorm."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import lamina as lm

torch = pytest.importorskip("torch")  # the independent reference


def params_from(layer, module, shape):
    """Random torch affine weights, as lamina params, checked to round-trip."""
    with torch.no_grad():
        module.weight.uniform_(0.5, 1.5)
        if getattr(module, "bias", None) is not None:
            module.bias.uniform_(-0.5, 0.5)
    state = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    _, like = layer.init(jax.random.key(0), shape)
    params = layer.params_from_torch(state, like)
    back = layer.torch_params(params)
    assert list(back) == list(state)
    for k in state:
        np.testing.assert_array_equal(back[k], state[k])
    return params


@pytest.mark.parametrize("shape, eps", [((6,), 1e-6), ((3, 6), 1e-6), ((2, 3, 5), 1e-3),
                                        ((1,), 1e-6)])
@pytest.mark.parametrize("wrap", [jax.jit, lambda f: f], ids=["jit", "eager"])
def test_rms_norm_matches_torch(shape, eps, wrap):
    torch.manual_seed(len(shape))
    module = torch.nn.RMSNorm(shape[-1], eps=eps)
    layer = lm.RMSNorm(eps)
    params = params_from(layer, module, shape)
    x = torch.randn(*shape) * 3 + 1
    with torch.no_grad():
        want = module(x).numpy()
    np.testing.assert_allclose(wrap(layer.apply)(params, jnp.asarray(x.numpy())), want,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups, shape, eps", [
    (2, (4,), 1e-5), (1, (6, 5), 1e-5), (3, (6, 5), 1e-5), (6, (6, 5), 1e-5),
    (2, (4, 3, 5), 1e-3), (4, (8, 2, 3, 3), 1e-5),
])
@pytest.mark.parametrize("wrap", [jax.jit, lambda f: f], ids=["jit", "eager"])
def test_group_norm_matches_torch(groups, shape, eps, wrap):
    torch.manual_seed(groups)
    module = torch.nn.GroupNorm(groups, shape[0], eps=eps)
    layer = lm.GroupNorm(groups, eps)
    params = params_from(layer, module, shape)
    x = torch.randn(2, *shape) * 3 + 1
    with torch.no_grad():
        want = module(x).numpy()
    got = wrap(jax.vmap(layer.apply, in_axes=(None, 0)))(params, jnp.asarray(x.numpy()))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_input_gradients_match_torch():
    rng = np.random.default_rng(0)
    for layer, module, shape in ((lm.RMSNorm(1e-6), torch.nn.RMSNorm(5, eps=1e-6), (3, 5)),
                                 (lm.GroupNorm(2), torch.nn.GroupNorm(2, 4), (1, 4, 3))):
        params = params_from(layer, module, shape[1:] if isinstance(layer, lm.GroupNorm)
                             else shape)
        x = rng.standard_normal(shape).astype(np.float32)
        r = rng.standard_normal(shape).astype(np.float32)
        xt = torch.tensor(x, requires_grad=True)
        (module(xt) * torch.tensor(r)).sum().backward()
        apply = layer.apply if isinstance(layer, lm.RMSNorm) else jax.vmap(
            layer.apply, in_axes=(None, 0))
        got = jax.grad(lambda x: jnp.sum(apply(params, x) * r))(jnp.asarray(x))
        np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_gradients_match_finite_differences(key, x64):
    for layer, shape in ((lm.RMSNorm(), (5,)), (lm.GroupNorm(2), (4, 3))):
        _, params = layer.init(key, shape)
        p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) * 1.5 - 0.2, params)
        x = jax.random.normal(jax.random.key(1), shape, jnp.float64)
        check_grads(lambda p, x: jnp.sum(layer.apply(p, x) * jnp.arange(x.size).reshape(shape)),
                    (p, x), order=1, modes=["rev"])


def test_init_and_torch_names(key):
    shape, params = lm.RMSNorm().init(key, (3, 4))
    assert shape == (3, 4) and list(params) == ["scale"]
    np.testing.assert_array_equal(params["scale"], np.ones(4))
    np.testing.assert_array_equal(torch.nn.RMSNorm(4).weight.detach().numpy(), np.ones(4))
    shape, params = lm.GroupNorm(2).init(key, (4, 5, 5))
    assert shape == (4, 5, 5) and sorted(params) == ["offset", "scale"]
    np.testing.assert_array_equal(params["scale"], np.ones(4))
    np.testing.assert_array_equal(params["offset"], np.zeros(4))
    assert lm.RMSNorm().torch_names == {"scale": "weight"}
    assert lm.GroupNorm(2).torch_names == {"scale": "weight", "offset": "bias"}


@pytest.mark.slow
def test_low_precision_input_keeps_its_dtype(key):
    x = jnp.linspace(-2, 2, 8, dtype=jnp.bfloat16).reshape(4, 2)
    for layer in (lm.RMSNorm(), lm.GroupNorm(2)):
        _, params = layer.init(key, (4, 2))
        y = layer.apply(params, x)
        assert y.dtype == jnp.bfloat16
        ref = layer.apply(params, x.astype(jnp.float32))
        np.testing.assert_allclose(y.astype(jnp.float32), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("layer, input_shape", [
    (lm.RMSNorm(1e-3), (2, 5)),
    (lm.GroupNorm(1), (3,)), (lm.GroupNorm(2), (4, 5)), (lm.GroupNorm(3), (6, 2, 3)),
], ids=repr)
@pytest.mark.slow
def test_check_layer(layer, input_shape):
    lm.testing.check_layer(layer, input_shape)


def test_in_a_model(key):
    model = lm.serial(lm.GroupNorm(2), lm.Flatten(), lm.Dense(6), lm.RMSNorm(), lm.Dense(2))
    _, params = model.init(key, (4, 3))
    assert lm.forward(model)(params, jnp.ones((5, 4, 3))).shape == (5, 2)
    s = lm.summary(model, (4, 3), show=False)
    assert [r.flops for r in s.rows][0] == 7 * 12 and [r.flops for r in s.rows][3] == 4 * 6


@pytest.mark.parametrize("layer", [lm.RMSNorm(), lm.RMSNorm(1e-3), lm.GroupNorm(4),
                                   lm.GroupNorm(2, eps=1e-3)], ids=repr)
def test_values_equality_hash_pickle(layer):
    again = pickle.loads(pickle.dumps(layer))
    assert again == layer and hash(again) == hash(layer) and repr(again) == repr(layer)
    assert type(layer).from_config(layer.config()) == layer


def test_reprs():
    assert repr(lm.RMSNorm()) == lm.RMSNorm().name == "RMSNorm()"
    assert repr(lm.RMSNorm(1e-3)) == "RMSNorm(eps=0.001)"
    assert repr(lm.GroupNorm(4)) == "GroupNorm(4)"
    assert repr(lm.GroupNorm(4, eps=1e-3)) == "GroupNorm(4, eps=0.001)"
    assert lm.RMSNorm(1) == lm.RMSNorm(1.0) and lm.GroupNorm(2) != lm.GroupNorm(3)


@pytest.mark.parametrize("make, error, words", [
    (lambda: lm.RMSNorm(0), ValueError, r"^RMSNorm: eps must be > 0, got 0"),
    (lambda: lm.RMSNorm("1e-6"), TypeError, r"^RMSNorm: eps must be a number > 0"),
    (lambda: lm.GroupNorm(0), ValueError, r"^GroupNorm: groups must be >= 1, got 0"),
    (lambda: lm.GroupNorm(2.0), TypeError, r"^GroupNorm: groups must be an int, got float"),
    (lambda: lm.GroupNorm(2, eps=-1.0), ValueError, r"eps must be > 0, got -1.0"),
])
def test_constructor_errors(make, error, words):
    with pytest.raises(error, match=words) as info:
        make()
    assert isinstance(info.value, lm.LaminaError)


def test_apply_and_init_errors(key):
    _, params = lm.RMSNorm().init(key, (4,))
    with pytest.raises(ValueError, match=r"^RMSNorm\(\): expected input with last dimension 4 "
                                         r"\(scale has shape \(4,\)\), got x with shape \(5,\)"):
        lm.RMSNorm().apply(params, jnp.ones(5))
    with pytest.raises(ValueError, match=r"^RMSNorm\(\): expected scale of shape \(5,\) for "
                                         r"the input's 5 features or channels, got \(4, 1\)"):
        lm.RMSNorm().apply({"scale": jnp.ones((4, 1))}, jnp.ones(5))
    with pytest.raises(ValueError, match=r"RMSNorm\(\): expected x of shape \(..., D\), got a "
                                         r"scalar"):
        lm.RMSNorm().apply(params, jnp.float32(1))
    with pytest.raises(ValueError, match=r"expected params \{'scale': \(D,\)\}, got a dict with keys \['W'\]"):
        lm.RMSNorm().apply({"W": params["scale"]}, jnp.ones(4))
    with pytest.raises(TypeError, match=r"RMSNorm\(\): expected a floating-point input"):
        lm.RMSNorm().apply(params, jnp.ones(4, jnp.int32))
    with pytest.raises(ValueError, match=r"at least 1 dimension"):
        lm.RMSNorm().init(key, ())

    layer = lm.GroupNorm(3)
    with pytest.raises(ValueError, match=r"^GroupNorm\(3\): the number of channels C=4 must be "
                                         r"divisible by groups=3; got an example of shape "
                                         r"\(4, 5\) \(channels first\)"):
        layer.init(key, (4, 5))
    _, params = layer.init(key, (6, 5))
    for wrap in (jax.jit, lambda f: f):
        with pytest.raises(ValueError, match=r"C=5 must be divisible by groups=3"):
            wrap(layer.apply)(params, jnp.ones((5, 6)))  # channels last by mistake
    with pytest.raises(ValueError, match=r"expected offset of shape \(6,\) .*got \(3,\)"):
        layer.apply({**params, "offset": jnp.zeros(3)}, jnp.ones((6, 5)))
    with pytest.raises(TypeError, match=r"expected params \{'scale': \(C,\), 'offset': \(C,\)\}, "
                                        r"got tuple"):
        layer.apply((), jnp.ones((6, 5)))
    with pytest.raises(ValueError, match=r"GroupNorm\(3\): expected one channels-first example "
                                         r"\(C, \*spatial\), got a scalar"):
        layer.init(key, ())
    with pytest.raises(TypeError, match=r"expected a floating-point input"):
        layer.apply(params, jnp.ones((6, 5), jnp.int32))
