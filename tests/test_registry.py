"""Every public layer, from the one registry, through every part of lamina.

`lamina._src.layers.registry` lists each public layer class with examples;
these tests run each example through check_layer, value semantics, save and
load_model, summary and trace, and a PyTorch round trip where torch has a
twin. A layer class that is not in the registry fails the first test.
"""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import lamina as lm
from lamina._src.core.builtin import Builtin
from lamina._src.layers.registry import EXAMPLES, LAYERS

nn = torch.nn
CASES = [(name, i, ex) for name, examples in EXAMPLES.items() for i, ex in enumerate(examples)]
IDS = [f"{name}-{i}" for name, i, _ in CASES]


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_layer_class_is_public_and_registered_with_examples():
    public = {name for name in lm.__all__
              if isinstance(getattr(lm, name), type) and issubclass(getattr(lm, name), Builtin)}
    defined = {cls.__name__ for cls in _subclasses(Builtin)  # not the bases in core/
               if cls.__module__.startswith("lamina._src.layers") and not cls.__name__.startswith("_")}
    assert public == set(LAYERS), "lm exports a layer class the registry lacks, or the reverse"
    assert defined == set(LAYERS), "a layer class is defined but not registered"
    assert set(EXAMPLES) == set(LAYERS)
    for name, examples in EXAMPLES.items():
        assert examples and all(type(ex.layer) is LAYERS[name] for ex in examples), name


def test_no_layer_writes_post_init_or_its_own_field_checks():
    # Fields check themselves (their types); a layer's own __post_init__
    # would bypass that, so none may define one.
    for cls in _subclasses(Builtin):
        assert "__post_init__" not in vars(cls), cls.__name__


def _init(ex):
    _, params = ex.layer.init(jax.random.key(0), ex.input_shape)
    state = lm.init_state(ex.layer, ex.input_shape) if ex.layer.stateful else None
    return params, state


def _inputs(ex, n=3, seed=1):
    rng = np.random.default_rng(seed)

    def one(shape):
        if jnp.issubdtype(ex.input_dtype, jnp.integer):
            return rng.integers(0, ex.int_high, (n,) + shape).astype(ex.input_dtype)
        return rng.standard_normal((n,) + shape).astype(np.float32)

    shape = ex.input_shape
    if isinstance(shape, dict):
        return {k: one(s) for k, s in shape.items()}
    return tuple(one(s) for s in shape) if shape and isinstance(shape[0], tuple) else one(shape)


FIRST = [case for case in CASES if case[1] == 0]


@pytest.mark.slow
@pytest.mark.parametrize("name, i, ex", FIRST, ids=[f"{n}-{i}" for n, i, _ in FIRST])
def test_check_layer(name, i, ex):
    lm.testing.check_layer(ex.layer, ex.input_shape, input_dtype=ex.input_dtype,
                           int_high=ex.int_high)


@pytest.mark.parametrize("name, i, ex", CASES, ids=IDS)
def test_a_value_of_its_configuration(name, i, ex):
    layer = ex.layer
    rebuilt = type(layer).from_config(layer.config())
    assert rebuilt == layer and hash(rebuilt) == hash(layer)
    copy = pickle.loads(pickle.dumps(layer))
    assert copy == layer and hash(copy) == hash(layer) and repr(copy) == repr(layer)
    # The repr is the call that builds it.
    assert eval(repr(layer), {**vars(lm), "jnp": jnp}) == layer  # noqa: S307
    if layer.config():
        assert layer != layer.replace(**_another(layer))


def _another(layer):
    """A field changed, so the layer is a different value."""
    for field, value in layer.config().items():
        if isinstance(value, bool):
            return {field: not value}
        if isinstance(value, float) and field != "rate":
            return {field: value / 2}
        if isinstance(value, int) and not isinstance(value, bool) and field != "axis":
            return {field: value * 2 or 1}
    if isinstance(layer, lm.Permute):
        return {"dims": layer.dims[::-1]}
    for field, value in layer.config().items():
        if isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
            return {field: tuple(v + 1 if v > 0 else v for v in value)}
    if "layers" in layer.config():
        return {"layers": layer.layers + (lm.Identity(),)}
    if isinstance(layer, lm.Dropout):
        return {"rate": 0.25}
    if isinstance(layer, lm.Concat):
        return {"axis": 0 if layer.axis else -1}
    if isinstance(layer, lm.Activation):
        return {"act": "relu"}
    if isinstance(layer, lm.with_dtype):
        return {"compute": jnp.bfloat16}
    if isinstance(layer, lm.PositionEmbedding):
        return {"max_length": 16}
    return {"layer": lm.Identity()}


@pytest.mark.parametrize("name, i, ex", CASES, ids=IDS)
def test_saved_with_its_model_and_rebuilt(name, i, ex, tmp_path):
    params, state = _init(ex)
    lm.save(tmp_path / "m.safetensors", params, model=ex.layer)
    model, loaded = lm.load_model(tmp_path / "m.safetensors")
    assert model == ex.layer
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    xs = _inputs(ex)
    kwargs = {} if state is None else {"state": state}
    np.testing.assert_array_equal(
        np.asarray(jax.tree.leaves(lm.forward(model)(loaded, xs, **kwargs))[0]),
        np.asarray(jax.tree.leaves(lm.forward(ex.layer)(params, xs, **kwargs))[0]))


@pytest.mark.slow
@pytest.mark.parametrize("name, i, ex", CASES, ids=IDS)
def test_summary_trace_and_call_agree(name, i, ex):
    params, state = _init(ex)
    info = lm.summary(ex.layer, ex.input_shape, show=False, input_dtype=ex.input_dtype)
    assert info.params == sum(leaf.size for leaf in jax.tree.leaves(params))
    assert sum(row.params for row in info.rows) == info.params  # each weight in one row
    assert info.state == sum(leaf.size for leaf in jax.tree.leaves(state))
    x = jax.tree.map(lambda a: a[0], _inputs(ex))
    steps = lm.trace(ex.layer, params, x, state=state)
    assert [s.path for s in steps] == [r.path for r in info.rows]
    y = ex.layer.apply(params, x) if state is None else ex.layer.apply(params, x, state=state)[0]
    for got, want in zip(jax.tree.leaves(steps[-1].output), jax.tree.leaves(y), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # The one internal signature gives the same, with the state (`()` without any).
    y_call, new = ex.layer.call(params, () if state is None else state, x)
    jax.tree.map(np.testing.assert_array_equal, y_call, y)
    assert new == () if state is None else jax.tree.structure(new) == jax.tree.structure(state)
    # Every step's sources point back to earlier steps or the input.
    for k, step in enumerate(steps):
        assert step.sources is None or all(-1 <= j < k for j in step.sources)


# --- PyTorch: each layer with weights against its torch twin -------------------

def _act(act):
    return {None: lambda x: x, "relu": torch.relu, "tanh": torch.tanh}[act]


def _conv(layer, shape):
    n = len(shape) - 1
    cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[n - 1] \
        if isinstance(layer, lm.ConvTranspose) else (nn.Conv1d, nn.Conv2d, nn.Conv3d)[n - 1]
    extra = {"output_padding": layer.output_padding} if isinstance(layer, lm.ConvTranspose) else {}
    if isinstance(layer, lm.Conv):
        extra = {"padding_mode": layer.padding_mode}
    module = cls(shape[0], layer.out_channels, layer.kernel_size, stride=layer.stride,
                 padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                 bias=layer.use_bias, **extra)
    return module, lambda x: _act(layer.act)(module(x))


def _causal(T):
    return torch.triu(torch.ones(T, T, dtype=torch.bool), 1)


def _attention(layer, shape):
    T, D = shape
    module = nn.MultiheadAttention(D, layer.num_heads, bias=layer.use_bias, batch_first=True)
    mask = _causal(T) if layer.causal else None
    return module, lambda x: module(x, x, x, need_weights=False, attn_mask=mask)[0]


def _encoder(layer, shape):
    T, D = shape
    module = nn.TransformerEncoderLayer(D, layer.num_heads, layer.ff_features, dropout=0.0,
                                        activation=layer.act, batch_first=True,
                                        norm_first=layer.norm_first, layer_norm_eps=layer.eps)
    mask = _causal(T) if layer.causal else None
    return module, lambda x: module(x, src_mask=mask)


def _batch_norm(layer, shape):
    module = (nn.BatchNorm1d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[len(shape) - 1](
        shape[0], eps=layer.eps, momentum=layer.momentum)
    return module, module


def _sequential(layer, shape):
    modules, fns = [], []
    for child in layer.layers:
        module, fn = _twin(child, shape)
        modules.append(module)
        fns.append(fn)
        shape = lm.param_shapes(child, shape)[0]
    net = nn.Sequential(*modules)

    def run(x):
        for fn in fns:
            x = fn(x)
        return x

    return net, run


def _twin(layer, shape):
    """`(torch module, function of a torch batch)` computing what `layer` does."""
    if isinstance(layer, lm.Dense):
        module = nn.Linear(shape[-1], layer.out_features, bias=layer.use_bias)
        return module, lambda x: _act(layer.act)(module(x))
    if isinstance(layer, (lm.Conv, lm.ConvTranspose)):
        return _conv(layer, shape)
    if isinstance(layer, lm.LayerNorm):
        module = nn.LayerNorm(shape[-1], eps=layer.eps)
    elif isinstance(layer, lm.RMSNorm):
        module = nn.RMSNorm(shape[-1], eps=layer.eps)
    elif isinstance(layer, lm.GroupNorm):
        module = nn.GroupNorm(layer.groups, shape[0], eps=layer.eps)
    elif isinstance(layer, lm.BatchNorm):
        return _batch_norm(layer, shape)
    elif isinstance(layer, lm.Embedding):
        module = nn.Embedding(layer.num_embeddings, layer.features)
    elif isinstance(layer, (lm.LSTM, lm.GRU)):
        module = (nn.LSTM if isinstance(layer, lm.LSTM) else nn.GRU)(
            shape[-1], layer.hidden, num_layers=layer.num_layers,
            bidirectional=layer.bidirectional, batch_first=True)
        return module, lambda x: module(x)[0]
    elif isinstance(layer, lm.MultiHeadAttention):
        return _attention(layer, shape)
    elif isinstance(layer, lm.TransformerEncoderLayer):
        return _encoder(layer, shape)
    elif isinstance(layer, (lm.with_dtype, lm.remat)):
        return _twin(layer.model if isinstance(layer, lm.with_dtype) else layer.layer, shape)
    elif isinstance(layer, lm.tied):  # GPT-2's head: the embedding's table, transposed
        net, run = _sequential(layer, shape)
        return net, lambda x: run(x) @ net[0].weight.T
    elif isinstance(layer, lm.serial):
        return _sequential(layer, shape)
    elif isinstance(layer, lm.MaxPool):
        module = nn.MaxPool2d(layer.window, layer.stride, layer.padding)
    elif isinstance(layer, lm.Flatten):
        module = nn.Flatten()
    elif isinstance(layer, lm.Activation):
        module = nn.ReLU() if layer.act == "relu" else nn.Tanh()
    elif isinstance(layer, lm.Dropout):
        module = nn.Dropout(layer.rate)
    elif isinstance(layer, (lm.ClassToken, lm.PositionEmbedding)):
        return _learned(layer, shape)
    else:
        raise KeyError(type(layer).__name__)
    return module, module


class _Learned(nn.Module):
    """torchvision's ViT keeps its class token and positions as bare parameters."""

    def __init__(self, name, shape):
        super().__init__()
        self.register_parameter(name, nn.Parameter(torch.randn(shape)))


def _learned(layer, shape):
    if isinstance(layer, lm.ClassToken):
        module = _Learned("class_token", (1, 1, shape[-1]))
        return module, lambda x: torch.cat(
            [module.class_token.expand(*x.shape[:-2], 1, x.shape[-1]), x], dim=-2)
    rows = layer.max_length or shape[-2]
    module = _Learned("pos_embedding", (1, rows, shape[-1]))
    return module, lambda x: x + module.pos_embedding[0, : x.shape[-2]]


# Layers without weights have nothing to exchange; these hold weights but are
# lamina's own composition, tested against torch in their own files.
NO_TWIN = {
    "Activation", "AdaptiveAvgPool", "Add", "AvgPool", "Concat", "Dropout", "Flatten",
    "GlobalAvgPool", "Identity", "MaxPool", "Multiply", "Permute", "Reshape", "Select", "Take", "Timesteps",
    "Upsample",  # no weights (each against torch in its own test file)
    "parallel", "residual", "stack",  # composition: test_combinators.py, test_stack.py
    "TransformerDecoderLayer",  # a dict input: tests/test_decoder.py
}


def test_every_layer_with_weights_has_a_torch_twin():
    for name, examples in EXAMPLES.items():
        if name in NO_TWIN:
            continue
        for ex in examples:
            _twin(ex.layer, ex.input_shape)  # raises for a layer without one


TWIN_CASES = [case for case in CASES if case[0] not in NO_TWIN]


@pytest.mark.parametrize("name, i, ex", TWIN_CASES, ids=[f"{n}-{i}" for n, i, _ in TWIN_CASES])
def test_torch_round_trip(name, i, ex):
    torch.manual_seed(i)
    module, run = _twin(ex.layer, ex.input_shape)
    module.eval()
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.Sequential)):
        for sub in module.modules():  # running statistics that are not 0 and 1
            if isinstance(sub, (nn.BatchNorm1d, nn.BatchNorm2d)):
                sub.running_mean.uniform_(-1, 1)
                sub.running_var.uniform_(0.5, 2)
                sub.weight.data.uniform_(0.5, 2)
    theirs = module.state_dict()
    got = lm.from_torch(theirs, like=(ex.layer, ex.input_shape))
    params, state = got if ex.layer.stateful else (got, None)
    back = lm.to_torch(params, like=theirs, state=state, model=ex.layer)
    for key, value in theirs.items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)
    xs = _inputs(ex)
    with torch.no_grad():
        want = run(torch.as_tensor(xs)).numpy()
    kwargs = {} if state is None else {"state": state}
    ours = lm.forward(ex.layer)(params, xs, **kwargs)
    ours = ours[0] if state is not None else ours
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5)
