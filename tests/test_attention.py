"""MultiHeadAttention and TransformerEncoderLayer against PyTorch's modules."""

import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lamina as lm

torch = pytest.importorskip("torch")  # the independent reference
nn = torch.nn

BATCH = 2


def numpy_state(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def causal_mask(T):
    return nn.Transformer.generate_square_subsequent_mask(T)


def lamina_params(layer, module, shape):
    """The torch module's weights as lamina params, checked to round-trip."""
    _, like = layer.init(jax.random.key(0), shape)
    state = numpy_state(module)
    params = layer.params_from_torch(state, like)
    back = layer.torch_params(params)
    assert list(back) == list(state)  # torch's names, in torch's state-dict order
    for name in state:
        np.testing.assert_array_equal(back[name], state[name])
    assert jax.tree.structure(params) == jax.tree.structure(like)
    return params


def input_grads(layer, params, module, x, mask):
    """d sum(y * r) / dx from lamina and from torch's autograd."""
    r = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)

    def loss(x):
        return jnp.sum(jax.vmap(layer.apply, in_axes=(None, 0))(params, x) * r)

    xt = torch.tensor(x, requires_grad=True)
    (torch_out(module, xt, mask) * torch.tensor(r)).sum().backward()
    return jax.grad(loss)(jnp.asarray(x)), xt.grad.numpy()


def torch_out(module, x, mask):
    if isinstance(module, nn.MultiheadAttention):
        return module(x, x, x, need_weights=False, attn_mask=mask)[0]
    return module(x, src_mask=mask)


def with_eager(cases, eager=(0, 1)):
    """Every case under jit; the first two also eagerly (op by op), where a
    difference from jit would show, without compiling every case twice."""
    jitted = [pytest.param(*case, jax.jit, id=f"{i}-jit") for i, case in enumerate(cases)]
    return jitted + [pytest.param(*cases[i], lambda f: f, id=f"{i}-eager") for i in eager]


MHA_CASES = [  # T, D, num_heads, causal, use_bias
    (5, 8, 2, False, True),
    (7, 12, 3, True, True),
    (4, 6, 1, False, False),
    (6, 16, 4, True, False),
    (1, 4, 4, True, True),
]


@pytest.mark.slow
@pytest.mark.parametrize("T, D, num_heads, causal, use_bias, wrap", with_eager(MHA_CASES))
def test_attention_matches_torch(T, D, num_heads, causal, use_bias, wrap):
    torch.manual_seed(T * D + num_heads)
    module = nn.MultiheadAttention(D, num_heads, batch_first=True, bias=use_bias).eval()
    layer = lm.MultiHeadAttention(num_heads, causal=causal, use_bias=use_bias)
    params = lamina_params(layer, module, (T, D))
    x = torch.randn(BATCH, T, D)
    mask = causal_mask(T) if causal else None
    with torch.no_grad():
        want = torch_out(module, x, mask).numpy()
    got = wrap(jax.vmap(layer.apply, in_axes=(None, 0)))(params, jnp.asarray(x.numpy()))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    one = wrap(layer.apply)(params, jnp.asarray(x[0].numpy()))
    np.testing.assert_allclose(one, want[0], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("T, D, num_heads, causal, use_bias", MHA_CASES[:4])
def test_attention_input_gradients_match_torch(T, D, num_heads, causal, use_bias):
    torch.manual_seed(1)
    module = nn.MultiheadAttention(D, num_heads, batch_first=True, bias=use_bias)
    layer = lm.MultiHeadAttention(num_heads, causal=causal, use_bias=use_bias)
    params = lamina_params(layer, module, (T, D))
    x = torch.randn(BATCH, T, D).numpy()
    got, want = input_grads(layer, params, module, x, causal_mask(T) if causal else None)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_causal_attention_ignores_the_future(key):
    layer = lm.MultiHeadAttention(2, causal=True)
    _, params = layer.init(key, (6, 8))
    x = jax.random.normal(jax.random.key(1), (6, 8))
    changed = x.at[4:].set(100.0)
    np.testing.assert_allclose(layer.apply(params, x)[:4], layer.apply(params, changed)[:4],
                               rtol=1e-6, atol=1e-6)
    assert not np.allclose(lm.MultiHeadAttention(2).apply(params, x)[:4],
                           lm.MultiHeadAttention(2).apply(params, changed)[:4])


def test_attention_default_init_is_torchs(key):
    D = 64
    torch.manual_seed(0)
    module = nn.MultiheadAttention(D, 4, batch_first=True)
    _, params = lm.MultiHeadAttention(4).init(key, (3, D))
    ours = lm.MultiHeadAttention(4).torch_params(params)
    theirs = numpy_state(module)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    # in_proj: xavier_uniform, bound sqrt(6 / (D + 3D)); out_proj: nn.Linear's 1/sqrt(D).
    for name, bound in (("in_proj_weight", np.sqrt(6 / (4 * D))), ("out_proj.weight", D**-0.5)):
        for w in (np.asarray(ours[name]), theirs[name]):
            assert np.abs(w).max() <= bound and np.abs(w).max() > 0.98 * bound
            np.testing.assert_allclose(w.std(), bound / np.sqrt(3), rtol=0.05)
    for name in ("in_proj_bias", "out_proj.bias"):
        np.testing.assert_array_equal(ours[name], theirs[name])  # zeros
        assert not np.asarray(ours[name]).any()
    _, no_bias = lm.MultiHeadAttention(4, use_bias=False).init(key, (3, D))
    assert {part: sorted(p) for part, p in no_bias.items()} == {"qkv": ["W"], "out": ["W"]}


def test_attention_flops_closed_form():
    T, D = 7, 12
    s = lm.summary(lm.MultiHeadAttention(3), (T, D), show=False)
    projections = 2 * T * D * 3 * D + 2 * T * D * D + T * (3 * D + D)
    scores, weighted_sum = 2 * T * T * D, 2 * T * T * D
    assert s.flops == projections + scores + weighted_sum
    assert s.params == 3 * D * D + 3 * D + D * D + D
    s = lm.summary(lm.MultiHeadAttention(3, causal=True, use_bias=False), (T, D), show=False)
    assert s.flops == 2 * T * D * 3 * D + 2 * T * D * D + 4 * T * T * D


ENCODER_CASES = [  # T, D, num_heads, ff_features, act, norm_first, causal, eps
    (5, 8, 2, 16, "relu", True, False, 1e-5),
    (6, 8, 2, 32, "relu", False, False, 1e-5),
    (4, 12, 3, 24, "gelu", True, True, 1e-5),
    (7, 12, 4, 20, "gelu", False, True, 1e-3),
    (3, 6, 1, 8, "relu", True, True, 1e-6),
    (5, 8, 2, 16, "gelu_tanh", True, True, 1e-5),   # GPT-2's block
]


def _gelu_tanh(x):
    return nn.functional.gelu(x, approximate="tanh")


def torch_encoder(D, num_heads, ff, act, norm_first, eps, seed=0):
    torch.manual_seed(seed)
    module = nn.TransformerEncoderLayer(
        D, num_heads, ff, dropout=0.0, batch_first=True,
        # A function, not nn.GELU(approximate="tanh"): torch's inference fast
        # path takes any nn.GELU for the exact one.
        activation=_gelu_tanh if act == "gelu_tanh" else act,
        norm_first=norm_first, layer_norm_eps=eps,
    )
    with torch.no_grad():  # LayerNorm's ones and zeros would not test the mapping
        for norm in (module.norm1, module.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
        module.self_attn.in_proj_bias.uniform_(-0.2, 0.2)
        module.self_attn.out_proj.bias.uniform_(-0.2, 0.2)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("T, D, num_heads, ff, act, norm_first, causal, eps, wrap",
                         with_eager(ENCODER_CASES))
def test_encoder_matches_torch(T, D, num_heads, ff, act, norm_first, causal, eps, wrap):
    module = torch_encoder(D, num_heads, ff, act, norm_first, eps).eval()
    layer = lm.TransformerEncoderLayer(num_heads, ff, act=act, norm_first=norm_first,
                                       causal=causal, eps=eps)
    params = lamina_params(layer, module, (T, D))
    x = torch.randn(BATCH, T, D) * 2
    with torch.no_grad():
        want = torch_out(module, x, causal_mask(T) if causal else None).numpy()
    got = wrap(jax.vmap(layer.apply, in_axes=(None, 0)))(params, jnp.asarray(x.numpy()))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T, D, num_heads, ff, act, norm_first, causal, eps",
                         [ENCODER_CASES[0], ENCODER_CASES[3]])  # pre/post norm, relu/gelu
@pytest.mark.slow
def test_encoder_input_gradients_match_torch(T, D, num_heads, ff, act, norm_first, causal, eps):
    module = torch_encoder(D, num_heads, ff, act, norm_first, eps, seed=3)
    layer = lm.TransformerEncoderLayer(num_heads, ff, act=act, norm_first=norm_first,
                                       causal=causal, eps=eps)
    params = lamina_params(layer, module, (T, D))
    x = torch.randn(BATCH, T, D).numpy()
    got, want = input_grads(layer, params, module, x, causal_mask(T) if causal else None)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_encoder_gelu_is_exact_not_tanh():
    block = lm.TransformerEncoderLayer(2, 16, act="gelu").block(8)
    ff = block.layers[1].layer.layers[1]  # Dense(16, gelu)
    z = jnp.linspace(-4.0, 4.0, 16)
    want = torch.nn.functional.gelu(torch.tensor(np.asarray(z))).numpy()
    got = ff.apply({"W": jnp.eye(16), "b": jnp.zeros(16)}, z)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert not np.allclose(jax.nn.gelu(z), want, rtol=1e-6, atol=1e-6)  # tanh-approximated


@pytest.mark.parametrize("norm_first", [True, False])
def test_encoder_is_made_of_lamina_layers(key, norm_first):
    layer = lm.TransformerEncoderLayer(2, 16, norm_first=norm_first)
    _, params = layer.init(key, (5, 8))
    x = jax.random.normal(jax.random.key(1), (5, 8))
    steps = lm.trace(layer, params, x)
    names = [type(s.layer).__name__ for s in steps]
    assert names.count("LayerNorm") == 2 and names.count("MultiHeadAttention") == 1
    assert names.count("Dense") == 2 and names.count("residual") == 2
    np.testing.assert_allclose(steps[-1].output, layer.apply(params, x), rtol=1e-6)
    for s in steps:  # each step's index points at its own params
        at = params
        for i in s.index:
            at = at[i]
        assert jax.tree.structure(at) == jax.tree.structure(s.params)
    # The sum of the parts' FLOPs: attention, two dense layers, two norms, two sums.
    T, D, ff = 5, 8, 16
    s = lm.summary(layer, (T, D), show=False)
    attention = 2 * T * D * 4 * D + T * 4 * D + 4 * T * T * D
    dense = (2 * D * ff + ff) * T + (2 * ff * D + D) * T
    assert s.flops == attention + dense + 2 * 7 * T * D + 2 * T * D


def test_encoder_default_init_uses_torchs_initializers(key):
    D, ff = 32, 64
    layer = lm.TransformerEncoderLayer(4, ff)
    _, params = layer.init(key, (3, D))
    ours = layer.torch_params(params)
    torch.manual_seed(0)
    theirs = numpy_state(nn.TransformerEncoderLayer(D, 4, ff, batch_first=True))
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    bounds = {"linear1.weight": D**-0.5, "linear1.bias": D**-0.5,
              "linear2.weight": ff**-0.5, "linear2.bias": ff**-0.5,
              "self_attn.in_proj_weight": np.sqrt(6 / (4 * D)),
              "self_attn.out_proj.weight": D**-0.5}
    for name, bound in bounds.items():
        for w in (np.asarray(ours[name]), theirs[name]):
            assert 0.5 * bound < np.abs(w).max() <= bound, name
    for name in ("self_attn.in_proj_bias", "self_attn.out_proj.bias", "norm1.bias",
                 "norm1.weight", "norm2.weight", "norm2.bias"):
        np.testing.assert_array_equal(ours[name], theirs[name])


@pytest.mark.parametrize("layer, input_shape", [
    # One of each kind: check_layer is slow on attention (float64 finite
    # differences of every parameter), and torch already pins the values.
    (lm.MultiHeadAttention(3, causal=True, use_bias=False), (4, 6)),
], ids=repr)
@pytest.mark.slow
def test_check_layer(layer, input_shape):
    lm.testing.check_layer(layer, input_shape)


def test_in_a_model_with_batches(key):
    model = lm.serial(lm.Dense(8), lm.TransformerEncoderLayer(2, 16, causal=True),
                      lm.MultiHeadAttention(4), lm.Flatten(), lm.Dense(3))
    _, params = model.init(key, (5, 4))
    assert lm.forward(model)(params, jnp.ones((7, 5, 4))).shape == (7, 3)


LAYERS = [
    lm.MultiHeadAttention(2),
    lm.MultiHeadAttention(4, causal=True, use_bias=False),
    lm.TransformerEncoderLayer(2, 16),
    lm.TransformerEncoderLayer(4, 64, act="gelu", norm_first=False, causal=True, eps=1e-6),
]


@pytest.mark.parametrize("layer", LAYERS, ids=repr)
def test_values_equality_hash_pickle(layer):
    again = pickle.loads(pickle.dumps(layer))
    assert again == layer and hash(again) == hash(layer) and repr(again) == repr(layer)
    assert type(layer).from_config(layer.config()) == layer
    json.dumps(layer.config())  # the configuration is plain JSON values


def test_reprs_and_names():
    assert repr(lm.MultiHeadAttention(2)) == "MultiHeadAttention(2)"
    assert repr(lm.MultiHeadAttention(4, causal=True, use_bias=False)) == (
        "MultiHeadAttention(4, causal=True, use_bias=False)")
    assert lm.MultiHeadAttention(4, causal=True).name == "MultiHeadAttention(4, causal=True)"
    assert repr(lm.TransformerEncoderLayer(2, 16, norm_first=False)) == (
        "TransformerEncoderLayer(2, 16, norm_first=False)")
    assert lm.TransformerEncoderLayer(2, 16) == lm.TransformerEncoderLayer(2, 16, eps=1e-5)
    assert lm.TransformerEncoderLayer(2, 16) != lm.TransformerEncoderLayer(2, 16, causal=True)
    assert lm.MultiHeadAttention(2) != lm.MultiHeadAttention(2, causal=True)
    assert lm.TransformerEncoderLayer(2, 16).replace(act="gelu").act == "gelu"
    # A pickled block's exact gelu is found again by name.
    block = lm.TransformerEncoderLayer(2, 16, act="gelu").block(8)
    assert pickle.loads(pickle.dumps(block)) == block


@pytest.mark.parametrize("make, error, words", [
    (lambda: lm.MultiHeadAttention(0), ValueError, r"MultiHeadAttention: num_heads must be >= 1"),
    (lambda: lm.MultiHeadAttention(2.0), TypeError, r"num_heads must be an int, got float"),
    (lambda: lm.MultiHeadAttention(True), TypeError, r"num_heads must be an int, got bool"),
    (lambda: lm.MultiHeadAttention(2, causal="yes"), TypeError, r"causal must be True or False"),
    (lambda: lm.MultiHeadAttention(2, use_bias=None), TypeError, r"use_bias must be True or"),
    (lambda: lm.TransformerEncoderLayer(0, 8), ValueError, r"num_heads must be >= 1"),
    (lambda: lm.TransformerEncoderLayer(2, "8"), TypeError, r"ff_features must be an int"),
    (lambda: lm.TransformerEncoderLayer(2, 8, act="tanh"), ValueError,
     r"act must be 'relu', 'gelu' \(torch's exact gelu\) or 'gelu_tanh' \(its tanh "
     r"approximation\), got 'tanh'"),
    (lambda: lm.TransformerEncoderLayer(2, 8, act=jax.nn.relu), TypeError, r"act must be"),
    (lambda: lm.TransformerEncoderLayer(2, 8, act=["relu"]), TypeError, r"act must be"),
    (lambda: lm.TransformerEncoderLayer(2, 8, norm_first=1.0), TypeError, r"norm_first must be"),
    (lambda: lm.TransformerEncoderLayer(2, 8, causal=None), TypeError, r"causal must be"),
    (lambda: lm.TransformerEncoderLayer(2, 8, eps=0), ValueError, r"eps must be > 0"),
    (lambda: lm.TransformerEncoderLayer(2, 8, eps="1"), TypeError, r"eps must be a number"),
])
def test_constructor_errors(make, error, words):
    with pytest.raises(error, match=words) as info:
        make()
    assert isinstance(info.value, lm.LaminaError)


@pytest.mark.parametrize("layer", [lm.MultiHeadAttention(4),
                                   lm.TransformerEncoderLayer(4, 16)], ids=repr)
def test_shape_errors_name_the_layer(key, layer):
    name = repr(layer).replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=name + r": the feature size D=10 must be divisible "
                                               r"by num_heads=4"):
        layer.init(key, (5, 10))
    with pytest.raises(ValueError, match=name + r": expected one example of shape \(T, D\).*"
                                               r"got shape \(8,\)$"):
        layer.init(key, (8,))
    _, params = layer.init(key, (5, 8))
    for wrap in (jax.jit, lambda f: f):
        with pytest.raises(ValueError, match=r"D=10 must be divisible by num_heads=4"):
            wrap(layer.apply)(params, jnp.ones((5, 10)))
        with pytest.raises(ValueError, match=r"got shape \(3, 5, 8\)\nLayers take one example; "
                                             r"use jax.vmap"):
            wrap(layer.apply)(params, jnp.ones((3, 5, 8)))
    with pytest.raises(TypeError, match=name + r": expected a floating-point input, got x of "
                                               r"dtype int32"):
        layer.apply(params, jnp.ones((5, 8), jnp.int32))
    with pytest.raises(TypeError, match=r"input_shape must be a tuple of ints"):
        layer.init(key, 8)
    with pytest.raises(TypeError, match=r"expected a PRNG key"):
        layer.init(0, (5, 8))


def test_attention_params_errors(key):
    layer = lm.MultiHeadAttention(2)
    _, params = layer.init(key, (5, 8))
    x = jnp.ones((5, 8))
    with pytest.raises(TypeError, match=r"expected params \{'qkv': \{'W': \(3D, D\)"):
        layer.apply((), x)
    with pytest.raises(ValueError, match=r"expected params .*got a dict with keys \['qkv'\]"):
        layer.apply({"qkv": params["qkv"]}, x)
    with pytest.raises(ValueError, match=r"expected params\['qkv'\]\['W'\] of shape \(24, D\) for "
                                         r"inputs with D=8 features, got \(8, 24\)"):
        layer.apply({**params, "qkv": {**params["qkv"], "W": params["qkv"]["W"].T}}, x)
    with pytest.raises(ValueError, match=r"expected params\['out'\]\['b'\] of shape \(8,\)"):
        layer.apply({**params, "out": {**params["out"], "b": jnp.zeros(3)}}, x)
    with pytest.raises(ValueError, match=r"params\['qkv'\] hold a bias 'b' but the layer was built "
                                         r"with use_bias=False"):
        lm.MultiHeadAttention(2, use_bias=False).apply(params, x)
    state = layer.torch_params(params)
    with pytest.raises(ValueError, match=r"torch tensors lack 'out_proj.bias'"):
        layer.params_from_torch({k: v for k, v in state.items() if k != "out_proj.bias"}, params)
    with pytest.raises(ValueError, match=r"torch 'in_proj_weight' has shape \(8, 24\), but "
                                         r"params\['qkv'\]\['W'\] expects \(24, 8\)"):
        layer.params_from_torch({**state, "in_proj_weight": state["in_proj_weight"].T}, params)


def test_errors_inside_a_model_name_the_path(key):
    model = lm.serial(lm.Dense(10), lm.MultiHeadAttention(4))
    with pytest.raises(ValueError, match=r"^serial\[1\] MultiHeadAttention\(4\): the feature "
                                         r"size D=10"):
        model.init(key, (5, 3))
    model = lm.serial(lm.Dense(10), lm.TransformerEncoderLayer(4, 8))
    with pytest.raises(ValueError, match=r"^serial\[1\] TransformerEncoderLayer\(4, 8\): the "
                                         r"feature size D=10"):
        model.init(key, (5, 3))
