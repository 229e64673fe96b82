"""LSTM and GRU against PyTorch's, one layer, batch_first, zero initial state.

torch.nn.LSTM/GRU is the independent reference: its `weight_ih_l0` etc. are
copied into lamina's params unchanged (no transposes), then outputs and
autograd gradients are compared.
"""

import math
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lamina as lm

LAYERS = pytest.mark.parametrize("kind, gates", [("LSTM", 4), ("GRU", 3)])
SIZES = [(1, 3, 5), (4, 1, 2), (7, 3, 5), (16, 8, 4)]  # (T, D, H), T=1 included


@pytest.fixture
def torch():
    return pytest.importorskip("torch")  # in the test extra


def _torch_pair(torch, kind, D, H, seed=0):
    """A torch layer and the same weights as lamina params, copied unchanged."""
    torch.manual_seed(seed)
    module = getattr(torch.nn, kind)(D, H, batch_first=True)
    state = module.state_dict()
    layer = getattr(lm, kind)(H)
    assert set(state) == set(layer.torch_names.values())
    params = {k: jnp.asarray(state[name].numpy()) for k, name in layer.torch_names.items()}
    return module, layer, params


@pytest.mark.slow
@pytest.mark.parametrize("T, D, H, wrap", [
    # every size under jit; eagerly (op by op) the two where a difference would show
    *(pytest.param(*size, jax.jit, id=f"{size}-jit") for size in SIZES),
    *(pytest.param(*size, lambda f: f, id=f"{size}-eager") for size in SIZES[::2]),
])
@LAYERS
def test_matches_torch(torch, kind, gates, T, D, H, wrap):
    module, layer, params = _torch_pair(torch, kind, D, H)
    assert params["W_ih"].shape == (gates * H, D) and params["W_hh"].shape == (gates * H, H)
    xs = np.random.default_rng(T).standard_normal((3, T, D)).astype(np.float32)
    with torch.no_grad():
        ref = module(torch.from_numpy(xs))[0].numpy()  # (N, T, H), h0 = c0 = 0

    np.testing.assert_allclose(wrap(layer.apply)(params, xs[0]), ref[0], rtol=1e-5, atol=1e-5)
    batched = wrap(jax.vmap(layer.apply, in_axes=(None, 0)))(params, xs)
    np.testing.assert_allclose(batched, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@LAYERS
def test_gradients_match_torch(torch, kind, gates):
    T, D, H = 6, 3, 4
    module, layer, params = _torch_pair(torch, kind, D, H, seed=1)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((2, T, D)).astype(np.float32)
    w = rng.standard_normal((2, T, H)).astype(np.float32)  # a loss touching every output

    def loss(params, xs):
        return jnp.sum(jax.vmap(layer.apply, in_axes=(None, 0))(params, xs) * w)

    g_params, g_x = jax.grad(loss, argnums=(0, 1))(params, xs)

    x_t = torch.from_numpy(xs).requires_grad_(True)
    (module(x_t)[0] * torch.from_numpy(w)).sum().backward()
    np.testing.assert_allclose(g_x, x_t.grad.numpy(), rtol=1e-4, atol=1e-4)
    torch_grads = dict(module.named_parameters())
    for k, name in layer.torch_names.items():
        np.testing.assert_allclose(
            g_params[k], torch_grads[name].grad.numpy(), rtol=1e-4, atol=1e-4, err_msg=k
        )


@pytest.mark.slow
@pytest.mark.parametrize("layer", [lm.LSTM(5), lm.GRU(5)], ids=["LSTM", "GRU"])
def test_single_step_sequence(layer):
    lm.testing.check_layer(layer, (1, 2))


@LAYERS
def test_default_init_is_torchs(torch, kind, gates, key):
    H, D = 64, 48
    out_shape, params = getattr(lm, kind)(H).init(key, (10, D))
    assert out_shape == (10, H)
    assert {k: v.shape for k, v in params.items()} == {
        "W_ih": (gates * H, D), "W_hh": (gates * H, H), "b_ih": (gates * H,), "b_hh": (gates * H,)
    }
    # torch's reset_parameters: every parameter ~ U(-1/sqrt(H), 1/sqrt(H)).
    module = getattr(torch.nn, kind)(D, H, batch_first=True)
    bound = 1 / math.sqrt(module.hidden_size)
    for name, p in module.named_parameters():
        assert float(p.detach().abs().max()) <= bound, name
    for k, v in params.items():
        v = np.asarray(v)
        assert v.dtype == np.float32
        assert np.abs(v).max() <= bound, k
        assert np.abs(v).max() > 0.9 * bound, k  # fills the interval
    weights = np.concatenate([np.ravel(params["W_ih"]), np.ravel(params["W_hh"])])
    np.testing.assert_allclose(weights.mean(), 0.0, atol=0.05 * bound)
    np.testing.assert_allclose(weights.var(), bound**2 / 3, rtol=0.05)
    # Independent draws: no two params share their values.
    assert not np.allclose(params["b_ih"], params["b_hh"])


def _count_eqns(jaxpr):
    """Equations in a jaxpr, counting those inside jit, scan, cond ... bodies."""
    n = 0
    for eqn in jaxpr.eqns:
        n += 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(sub, "eqns"):
                    n += _count_eqns(sub)
    return n


@pytest.mark.parametrize("layer", [lm.LSTM(4), lm.GRU(4)], ids=["LSTM", "GRU"])
def test_program_size_does_not_grow_with_length(layer, key):
    sizes = []
    for T in (4, 64):
        _, params = layer.init(key, (T, 3))
        jaxpr = jax.make_jaxpr(jax.jit(layer.apply))(params, jnp.ones((T, 3)))
        sizes.append(_count_eqns(jaxpr.jaxpr))
        assert "scan" in str(jaxpr)
    assert sizes[0] == sizes[1], sizes


def test_values_of_their_configuration():
    assert lm.LSTM(8) == lm.LSTM(8) and hash(lm.LSTM(8)) == hash(lm.LSTM(8))
    assert lm.LSTM(8) != lm.LSTM(9) and lm.LSTM(8) != lm.GRU(8)
    assert lm.GRU(4) == lm.GRU(4) and hash(lm.GRU(4)) == hash(lm.GRU(4))
    for layer in (lm.LSTM(8), lm.GRU(3)):
        assert pickle.loads(pickle.dumps(layer)) == layer
        assert type(layer).from_config(layer.config()) == layer
    assert repr(lm.LSTM(8)) == "LSTM(8)" and repr(lm.GRU(3)) == "GRU(3)"
    assert lm.LSTM(8).name == "LSTM(8)" and lm.GRU(3).name == "GRU(3)"
    assert lm.LSTM(8).replace(hidden=2) == lm.LSTM(2)
    assert repr(lm.serial(lm.GRU(3), lm.Dense(2))) == "serial(GRU(3), Dense(2))"


@LAYERS
def test_summary_flops(kind, gates):
    T, D, H = 7, 3, 5
    s = lm.summary(lm.serial(getattr(lm, kind)(H), lm.Dense(2)), (T, D))
    (row,) = [r for r in s.rows if r.path == "serial[0]"]
    assert row.name == f"{kind}({H})" and row.output_shape == (T, H)
    assert row.params == gates * H * (D + H + 2)
    # input projection + recurrent projection + both biases, every step
    assert row.flops == 2 * T * D * gates * H + 2 * T * H * gates * H + 2 * T * gates * H


@pytest.mark.slow
@pytest.mark.parametrize("cls", [lm.LSTM, lm.GRU], ids=["LSTM", "GRU"])
def test_serial_runs_through_forward_on_a_batch(cls, key):
    model = lm.serial(cls(8), lm.Dense(2))
    out_shape, params = model.init(key, (5, 3))
    assert out_shape == (5, 2)
    xs = jax.random.normal(jax.random.key(1), (4, 5, 3))
    ys = lm.forward(model)(params, xs)
    assert ys.shape == (4, 5, 2)
    np.testing.assert_allclose(ys[2], model.apply(params, xs[2]), rtol=1e-5, atol=1e-6)


@LAYERS
def test_errors(kind, gates, key):
    cls = getattr(lm, kind)
    with pytest.raises(TypeError, match=rf"{kind}: hidden must be an int .* got float 8.0"):
        cls(8.0)
    with pytest.raises(TypeError, match=rf"{kind}: hidden must be an int"):
        cls(True)
    with pytest.raises(ValueError, match=rf"{kind}: hidden must be >= 1, got 0"):
        cls(0)

    layer = cls(4)
    with pytest.raises(ValueError, match=rf"{kind}\(4\): expected input_shape \(T, D\).* \(3,\)"):
        layer.init(key, (3,))
    with pytest.raises(ValueError, match=r"got \(2, 5, 3\)\n.*use jax.vmap or lm.forward"):
        layer.init(key, (2, 5, 3))

    _, params = layer.init(key, (5, 3))
    with pytest.raises(
        ValueError,
        match=rf"{kind}\(4\): expected one sequence of shape \(T, D\), got x with shape "
        r"\(2, 5, 3\)\.\n.*use jax.vmap or lm.forward for batches",
    ):
        layer.apply(params, jnp.ones((2, 5, 3)))
    with pytest.raises(ValueError, match=r"got x with shape \(3,\); a single step .* x\[None\]"):
        layer.apply(params, jnp.ones(3))
    with pytest.raises(
        ValueError, match=r"expected input with last dimension 3 \(W_ih has shape .*\), got x .* \(5, 2\)"
    ):
        layer.apply(params, jnp.ones((5, 2)))
    with pytest.raises(ValueError, match=r"got x with shape \(3, 5\)\. \(axes swapped\? x's first axis"):
        layer.apply(params, jnp.ones((3, 5)))
    with pytest.raises(TypeError, match=r"expected a floating-point input"):
        layer.apply(params, jnp.ones((5, 3), jnp.int32))

    gh = gates * 4
    with pytest.raises(ValueError, match=r"expected params \{'W_ih'.*got a dict with keys \['W', "):
        layer.apply({"W": params["W_ih"], "b": params["b_ih"]}, jnp.ones((5, 3)))
    with pytest.raises(TypeError, match=r"expected params \{'W_ih'.*got tuple"):
        layer.apply((), jnp.ones((5, 3)))
    bad = {**params, "W_hh": params["W_hh"][:, :3]}
    with pytest.raises(ValueError, match=rf"expected W_hh of shape \({gh}, 4\) .*got \({gh}, 3\)"):
        layer.apply(bad, jnp.ones((5, 3)))
    bad = {**params, "W_ih": params["W_ih"].T}
    with pytest.raises(ValueError, match=r"expected W_ih of shape .*transposed\? .*no \.T"):
        layer.apply(bad, jnp.ones((5, 3)))
    bad = {**params, "b_hh": params["b_hh"][:4]}
    with pytest.raises(ValueError, match=rf"expected b_hh of shape \({gh},\)"):
        layer.apply(bad, jnp.ones((5, 3)))


def test_errors_name_the_path(key):
    model = lm.serial(lm.Dense(3), lm.LSTM(4))
    _, params = model.init(key, (5, 2))
    with pytest.raises(lm.LaminaError, match=r"serial\[1\] LSTM\(4\): expected one sequence"):
        model.apply(params, jnp.ones((2, 5, 2)))


@pytest.mark.slow
@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
@pytest.mark.parametrize("num_layers, bidirectional", [(2, False), (1, True), (3, True)])
def test_layers_and_directions_equal_torch(torch, cls, num_layers, bidirectional):
    torch.manual_seed(num_layers)
    module = getattr(torch.nn, cls)(3, 4, num_layers=num_layers, bidirectional=bidirectional,
                                    batch_first=True)
    layer = getattr(lm, cls)(4, num_layers=num_layers, bidirectional=bidirectional)
    assert layer.init(jax.random.key(0), (6, 3))[0] == (6, 4 * (2 if bidirectional else 1))
    theirs = module.state_dict()
    params = lm.from_torch(theirs, like=(layer, (6, 3)))
    back = lm.to_torch(params, like=theirs, model=layer)
    assert sorted(back) == sorted(theirs)
    for name, value in theirs.items():
        np.testing.assert_array_equal(back[name], value.numpy(), err_msg=name)
    x = np.random.default_rng(0).standard_normal((2, 6, 3)).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    want = module(tx)[0]
    r = np.random.default_rng(1).standard_normal(tuple(want.shape)).astype(np.float32)
    (want * torch.tensor(r)).sum().backward()
    fwd = lm.forward(layer)
    np.testing.assert_allclose(fwd(params, x), want.detach().numpy(), rtol=1e-5, atol=1e-5)
    grad = jax.grad(lambda a: jnp.sum(fwd(params, a) * r))(x)
    np.testing.assert_allclose(grad, tx.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_layer_and_direction_errors():
    with pytest.raises(ValueError, match=r"num_layers must be >= 1"):
        lm.LSTM(4, num_layers=0)
    with pytest.raises(TypeError, match=r"bidirectional must be True or False"):
        lm.GRU(4, bidirectional=1)
    layer = lm.LSTM(4, num_layers=2)
    _, params = layer.init(jax.random.key(0), (5, 3))
    params["l1"]["W_ih"] = params["l1"]["W_ih"][:, :3]
    with pytest.raises(ValueError, match=r"expected params\['l1'\]\['W_ih'\] of shape \(16, 4\)"):
        layer.apply(params, jnp.ones((5, 3)))


@pytest.mark.slow
@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True)])
def test_initial_and_final_state_equal_torch(torch, cls, num_layers, bidirectional):
    torch.manual_seed(5)
    module = getattr(torch.nn, cls)(3, 4, num_layers=num_layers, bidirectional=bidirectional,
                                    batch_first=True)
    layer = getattr(lm, cls)(4, num_layers=num_layers, bidirectional=bidirectional,
                             return_state=True)
    n = num_layers * (2 if bidirectional else 1)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, 3)).astype(np.float32)
    h0, c0 = (rng.standard_normal((2, n, 4)).astype(np.float32) for _ in range(2))
    params = lm.from_torch(module.state_dict(), like=(layer, (6, 3)))
    tx, th0, tc0 = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    # torch's states are (layers * directions, batch, hidden); lamina's per example.
    hx = (th0.transpose(0, 1), tc0.transpose(0, 1)) if cls == "LSTM" else th0.transpose(0, 1)
    out, final = module(tx, hx)
    finals = final if cls == "LSTM" else (final,)
    inputs = {"input": x, "h_0": h0, **({"c_0": c0} if cls == "LSTM" else {})}
    got = lm.forward(layer)(params, inputs)
    assert got["output"].shape == (2, 6, 4 * (2 if bidirectional else 1))
    np.testing.assert_allclose(got["output"], out.detach().numpy(), rtol=1e-5, atol=1e-5)
    for name, want in zip(("h_n", "c_n"), finals):
        np.testing.assert_allclose(got[name], want.detach().transpose(0, 1).numpy(),
                                   rtol=1e-5, atol=1e-5, err_msg=name)
    # Gradients reach the initial state, through the output and the final state.
    loss = out.sum() + sum((f ** 2).sum() for f in finals)
    loss.backward()
    grads = jax.grad(lambda a: sum(jnp.sum(v) if k == "output" else jnp.sum(v ** 2)
                                   for k, v in lm.forward(layer)(params, a).items()))(inputs)
    for name, t in (("input", tx), ("h_0", th0), ("c_0", tc0)):
        if name in inputs:
            np.testing.assert_allclose(grads[name], t.grad.numpy(), rtol=1e-4, atol=1e-4,
                                       err_msg=name)


def test_a_state_given_and_returned_passes_check_layer_and_chains():
    layer = lm.GRU(3, return_state=True)
    lm.testing.check_layer(layer, {"input": (4, 2), "h_0": (1, 3)})
    # Two halves of a sequence, the second starting where the first ended, are the whole.
    _, params = layer.init(jax.random.key(0), (6, 2))
    x = np.random.default_rng(0).standard_normal((6, 2)).astype(np.float32)
    whole = layer.apply(params, x)
    first = layer.apply(params, x[:3])
    second = layer.apply(params, {"input": x[3:], "h_0": first["h_n"]})
    np.testing.assert_allclose(second["output"], whole["output"][3:], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(second["h_n"], whole["h_n"], rtol=1e-6, atol=1e-6)


def test_torchs_positional_form_is_the_dict_form():
    layer = lm.LSTM(3, num_layers=2)
    _, params = layer.init(jax.random.key(0), ((4, 2), ((2, 3), (2, 3))))
    rng = np.random.default_rng(1)
    x, h, c = (rng.standard_normal(s).astype(np.float32) for s in ((4, 2), (2, 3), (2, 3)))
    np.testing.assert_array_equal(layer.apply(params, (x, (h, c))),
                                  layer.apply(params, {"input": x, "h_0": h, "c_0": c}))
    with pytest.raises(ValueError, match=r"LSTM\(3\): a tuple input must be torch's "
                                         r"\(input, \(h_0, c_0\)\), got \(\(4, 2\), \(2, 3\)\)"):
        layer.apply(params, (x, h))
    with pytest.raises(ValueError, match=r"GRU\(3\): a tuple input must be torch's \(input, h_0\)"):
        lm.GRU(3).init(jax.random.key(0), ((4, 2), ((1, 3), (1, 3))))


def test_state_input_errors():
    with pytest.raises(ValueError, match=r"LSTM\(4\): expects an array \(T, D\) or a dict with "
                                         r"'input' \(T, D\) and the initial state 'h_0' and "
                                         r"'c_0' \(1, 4\), as torch's forward arguments"):
        lm.LSTM(4).init(jax.random.key(0), {"input": (5, 3), "h_0": (1, 4)})
    with pytest.raises(ValueError, match=r"h_0 must have shape \(4, 4\) \(num_layers \* "
                                         r"directions, hidden\) for one example, got \(2, 4\)"):
        lm.GRU(4, num_layers=2, bidirectional=True).init(
            jax.random.key(0), {"input": (5, 3), "h_0": (2, 4)})
    with pytest.raises(TypeError, match=r"GRU\(4\): expected a floating-point"):
        lm.GRU(4).apply(lm.GRU(4).init(jax.random.key(0), (5, 3))[1],
                        {"input": jnp.ones((5, 3)), "h_0": jnp.ones((1, 4), jnp.int32)})
