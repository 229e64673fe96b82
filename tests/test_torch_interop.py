"""from_torch/to_torch: weights cross unchanged and both frameworks predict the same."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lamina as lm
from lamina import from_torch, to_torch

torch = pytest.importorskip("torch")  # a guard only: torch is in the test extra
import safetensors.torch  # noqa: E402  (needs torch)

nn = torch.nn


def torch_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))


def torch_predict(module, xs):
    with torch.no_grad():
        return module(torch.as_tensor(np.asarray(xs))).numpy()


def inputs(n=32, d=5, seed=1):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_torch_weights_into_lamina_give_torch_outputs():
    module = torch_mlp()
    model = lm.mlp([16, 3])
    params = from_torch(module.state_dict(), like=(model, (5,)))
    # Same layout, so the very same numbers: no transposes anywhere.
    np.testing.assert_array_equal(params[0]["W"], module[0].weight.detach().numpy())
    np.testing.assert_array_equal(params[1]["b"], module[2].bias.detach().numpy())
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(params))
    xs = inputs()
    np.testing.assert_allclose(lm.forward(model)(params, xs), torch_predict(module, xs), atol=1e-5)


def test_lamina_weights_into_torch_give_lamina_outputs(key):
    model = lm.mlp([16, 3])
    _, params = model.init(key, (5,))
    module = torch_mlp(seed=5)
    state = to_torch(params, like=module.state_dict())
    assert list(state) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(isinstance(v, np.ndarray) for v in state.values())
    module.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    xs = inputs()
    np.testing.assert_allclose(torch_predict(module, xs), lm.forward(model)(params, xs), atol=1e-5)


def test_to_torch_without_like_follows_lamina_paths(key):
    model = lm.serial(lm.Dense(16), lm.Relu(), lm.Dense(3))
    _, params = model.init(key, (5,))
    state = to_torch(params)
    assert list(state) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    module = torch_mlp()
    module.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})  # strict
    xs = inputs()
    np.testing.assert_allclose(torch_predict(module, xs), lm.forward(model)(params, xs), atol=1e-5)
    single = to_torch({"W": jnp.ones((2, 3))})
    assert list(single) == ["weight"]
    nn.Linear(3, 2, bias=False).load_state_dict({k: torch.as_tensor(v) for k, v in single.items()})


@pytest.mark.slow
def test_model_trained_in_lamina_predicts_the_same_in_torch(key):
    xs = inputs(128)
    ys = (xs[:, 0] + xs[:, 1] > 0).astype(np.int32) + (xs[:, 2] > 1).astype(np.int32)
    model = lm.mlp([16, 3])
    _, params = model.init(key, (5,))
    params, history = lm.fit(
        model, params, optax.adam(1e-2), (xs, ys),
        loss_fn=optax.softmax_cross_entropy_with_integer_labels,
        epochs=3, batch_size=32, key=jax.random.key(3), progress=False,
    )
    assert history["train_loss"][-1] < history["train_loss"][0]
    module = torch_mlp(seed=9)
    module.load_state_dict({k: torch.as_tensor(v) for k, v in to_torch(params, like=module.state_dict()).items()})
    W1, b1, W2, b2 = (np.asarray(a, np.float64) for a in (params[0]["W"], params[0]["b"], params[1]["W"], params[1]["b"]))
    reference = np.maximum(xs @ W1.T + b1, 0) @ W2.T + b2  # float64 NumPy, independent of both
    np.testing.assert_allclose(torch_predict(module, xs), reference, atol=1e-5)
    np.testing.assert_allclose(lm.forward(model)(params, xs), reference, atol=1e-5)
    np.testing.assert_array_equal(torch_predict(module, xs).argmax(1), reference.argmax(1))


def test_from_a_safetensors_file_written_by_pytorch(tmp_path):
    module = torch_mlp(seed=2)
    path = tmp_path / "torch_model.safetensors"
    safetensors.torch.save_file(module.state_dict(), path)
    model = lm.serial(lm.Dense(16, act="relu"), lm.Dense(3))
    params = from_torch(path, like=(model, (5,)))
    xs = inputs()
    np.testing.assert_allclose(lm.forward(model)(params, xs), torch_predict(module, xs), atol=1e-5)


def test_bfloat16_and_float64_weights(tmp_path, key):
    module = torch_mlp(seed=3).to(torch.bfloat16)
    model = lm.mlp([16, 3])
    like = jax.tree.map(lambda a: a.astype(jnp.bfloat16), model.init(key, (5,))[1])
    expected = module[0].weight.detach().view(torch.int16).numpy().view(np.uint16)
    from_dict = from_torch(module.state_dict(), like=like)
    path = tmp_path / "bf16.safetensors"
    safetensors.torch.save_file(module.state_dict(), path)
    from_file = from_torch(path, like=like)
    for params in (from_dict, from_file):
        assert params[0]["W"].dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(params[0]["W"]).view(np.uint16), expected)
    double = torch_mlp(seed=4).double()
    params = from_torch(double.state_dict(), like=(model, (5,)))  # cast to like's float32
    assert params[0]["W"].dtype == jnp.float32
    np.testing.assert_allclose(params[0]["W"], double[0].weight.detach().numpy(), rtol=1e-7)


def test_layer_norm_and_nested_modules_map_in_order(key):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(5, 8)
            self.block = nn.ModuleDict({"norm": nn.LayerNorm(8), "lin": nn.Linear(8, 8)})
            self.out = nn.Linear(8, 3, bias=False)

        def forward(self, x):
            h = torch.relu(self.inp(x))
            h = h + torch.tanh(self.block["lin"](self.block["norm"](h)))
            return self.out(h)

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # non-trivial LayerNorm params
        net.block["norm"].weight.uniform_(0.5, 1.5)
        net.block["norm"].bias.uniform_(-0.5, 0.5)
    model = lm.serial(
        lm.Dense(8, act="relu"),
        lm.residual(lm.serial(lm.LayerNorm(), lm.Dense(8, act="tanh"))),
        lm.Dense(3, use_bias=False),
    )
    params = from_torch(net.state_dict(), like=(model, (5,)))
    np.testing.assert_array_equal(params[1][0][0]["scale"], net.block["norm"].weight.detach().numpy())
    xs = inputs()
    np.testing.assert_allclose(lm.forward(model)(params, xs), torch_predict(net, xs), atol=1e-5)
    state = to_torch(params, like=list(net.state_dict()))
    assert list(state) == list(net.state_dict())
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(state[k], v.numpy())


@pytest.mark.parametrize(
    "module, pattern",
    [
        (nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3), nn.Linear(3, 3)),
         r"from_torch: torch has 3 module\(s\) with weights \['0', '2', '3'\], but the lamina params have 2 weighted layer\(s\) \['0', '1'\]"),
        (nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 4)),
         r"from_torch: torch '2.weight' has shape \(4, 16\), but lamina '1.W' \(Dense\) expects \(3, 16\)"),
        (nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3, bias=False)),
         r"from_torch: torch module '2' holds \['weight'\], but lamina '1' \(Dense\) holds \['W', 'b'\], i.e. torch \['bias', 'weight'\]"),
        (nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.Linear(16, 3)),
         r"from_torch: torch has 3 module\(s\) with weights \['0', '1', '2'\], but the lamina params have 2"),
        (nn.Sequential(nn.Linear(5, 16), nn.LayerNorm(16), nn.Linear(16, 3)),
         r"torch has 3 module\(s\) with weights \['0', '1', '2'\], but the lamina params have 2"),
    ],
)
def test_from_torch_mismatches_name_torch_key_and_lamina_path(module, pattern):
    with pytest.raises(ValueError, match=pattern):
        from_torch(module.state_dict(), like=(lm.mlp([16, 3]), (5,)))


def test_transposed_weight_gets_a_hint():
    state = {k: v.clone() for k, v in torch_mlp().state_dict().items()}
    state["0.weight"] = state["0.weight"].T
    with pytest.raises(ValueError, match=r"torch '0.weight' has shape \(5, 16\), but lamina '0.W' \(Dense\) expects \(16, 5\) \(transposed\? .* no .T is needed\)"):
        from_torch(state, like=(lm.mlp([16, 3]), (5,)))


def test_to_torch_mismatches(key):
    _, params = lm.mlp([16, 3]).init(key, (5,))
    wider = nn.Sequential(nn.Linear(5, 17), nn.ReLU(), nn.Linear(17, 3))
    with pytest.raises(ValueError, match=r"to_torch: lamina '0.W' has shape \(16, 5\), but torch '0.weight' expects \(17, 5\)"):
        to_torch(params, like=wider.state_dict())
    with pytest.raises(ValueError, match=r"to_torch: torch has 1 module\(s\) with weights \['0'\], but the lamina params have 2"):
        to_torch(params, like=["0.weight", "0.bias"])
    with pytest.raises(TypeError, match=r"to_torch: like must be a torch state dict or a list of its keys, got '0.weight'"):
        to_torch(params, like="0.weight")


def test_unsupported_inputs(tmp_path, key):
    with pytest.raises(ValueError, match=r"to_torch: the params at '0' \(keys \['kernel'\]\) have no torch counterpart"):
        to_torch(({"kernel": jnp.ones((2, 2))},))
    with pytest.raises(TypeError, match=r"from_torch: expected a torch state dict or the path of a safetensors file, got Sequential"):
        from_torch(torch_mlp(), like=(lm.mlp([16, 3]), (5,)))
    pt = tmp_path / "model.pt"
    torch.save(torch_mlp().state_dict(), pt)
    with pytest.raises(ValueError, match=re.escape(f"from_torch({str(pt)!r}): this is a zip archive")):
        from_torch(pt, like=(lm.mlp([16, 3]), (5,)))


def test_file_modules_follow_sequential_numbering(tmp_path):
    # 7 Linear layers at indices 0, 2, ..., 12: "10" must come after "8", not after "0".
    torch.manual_seed(0)
    layers = []
    for i in range(7):
        layers += [nn.Linear(5 if i == 0 else 4, 3 if i == 6 else 4), nn.ReLU()]
    module = nn.Sequential(*layers[:-1])
    path = tmp_path / "deep.safetensors"
    safetensors.torch.save_file(module.state_dict(), path)
    model = lm.mlp([4] * 6 + [3])
    params = from_torch(path, like=(model, (5,)))
    xs = inputs()
    np.testing.assert_allclose(lm.forward(model)(params, xs), torch_predict(module, xs), atol=1e-5)
