"""serial and parallel with named layers: params by name, paths that read as torch's keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

import lamina as lm


def _net():
    return lm.serial(
        features=lm.serial(lm.Conv(4, 3, padding=1), lm.Relu(), lm.Conv(4, 3, padding=1)),
        norm=lm.BatchNorm(),
        pool=lm.GlobalAvgPool(),
        classifier=lm.Dense(3),
    )


class _TorchNet(nn.Module):
    """The same network; its modules registered in another order than they run."""

    def __init__(self):
        super().__init__()
        self.classifier = nn.Linear(4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.features = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(4, 4, 3, padding=1))

    def forward(self, x):
        return self.classifier(self.norm(self.features(x)).mean(dim=(2, 3)))


def test_params_are_a_dict_by_name_and_paths_read_as_torch_keys():
    model = _net()
    _, params = model.init(jax.random.key(0), (2, 5, 5))
    assert list(params) == ["features", "norm", "pool", "classifier"]
    assert model.names == ("features", "norm", "pool", "classifier")
    assert params["features"][2]["W"].shape == (4, 4, 3, 3)
    labels = lm.param_labels(params, {r"features\..*": "conv"}, "rest")
    assert labels["features"][0] == {"W": "conv", "b": "conv"}
    assert labels["classifier"] == {"W": "rest", "b": "rest"}
    rows = [row.path for row in lm.summary(model, (2, 5, 5)).rows]
    assert rows[:2] == ["serial[features].serial[0]", "serial[features].serial[1]"]
    assert repr(lm.serial(a=lm.Dense(2), b=lm.Relu())) == "serial(a=Dense(2), b=Activation('relu'))"


def test_equals_torch_by_name_whatever_order_torch_registers_its_modules():
    torch.manual_seed(0)
    net = _TorchNet().eval()
    with torch.no_grad():
        net.norm.running_mean.uniform_(-1, 1)
        net.norm.running_var.uniform_(0.5, 2)
    model = _net()
    assert list(net.state_dict())[0] == "classifier.weight"
    params, state = lm.from_torch(net.state_dict(), like=(model, (2, 5, 5)))
    xs = np.random.default_rng(0).normal(size=(3, 2, 5, 5)).astype(np.float32)
    got, _ = lm.forward(model)(params, xs, state=state)
    with torch.no_grad():
        want = net(torch.as_tensor(xs)).numpy()
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)
    back = lm.to_torch(params, state=state, model=model)
    assert sorted(back) == sorted(net.state_dict())
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


def test_by_name_mismatches_name_every_key_and_a_key_map_renames():
    model = lm.serial(encoder=lm.Dense(3), head=lm.Dense(2))
    torch_state = {"encoder.weight": np.ones((3, 4), np.float32),
                   "encoder.bias": np.zeros(3, np.float32),
                   "decoder.weight": np.ones((2, 3), np.float32),
                   "decoder.bias": np.zeros(2, np.float32)}
    with pytest.raises(ValueError, match=r"missing from torch: \['head.weight', 'head.bias'\]; "
                       r"torch's keys lamina has no place for: \['decoder.weight', "
                       r"'decoder.bias'\].*key_map="):
        lm.from_torch(torch_state, like=(model, (4,)))
    params = lm.from_torch(torch_state, like=(model, (4,)), key_map=[("^decoder", "head")])
    np.testing.assert_array_equal(params["head"]["W"], np.ones((2, 3)))
    bad = dict(torch_state, **{"decoder.weight": np.ones((3, 3), np.float32)})
    with pytest.raises(ValueError, match=r"torch 'head.weight' has shape \(3, 3\), but lamina "
                       r"'head.W' \(Dense\) expects \(2, 3\)"):
        lm.from_torch(bad, like=(model, (4,)), key_map=[("^decoder", "head")])


def test_a_stack_inside_is_numbered_as_torch_numbers_a_module_list():
    block = lm.serial(fc=lm.Dense(4, act="tanh"), norm=lm.LayerNorm())
    model = lm.serial(blocks=lm.stack(block, 3), head=lm.Dense(2))
    _, params = model.init(jax.random.key(1), (4,))
    keys = list(lm.to_torch(params, model=model))
    assert keys[:4] == ["blocks.0.fc.weight", "blocks.0.fc.bias", "blocks.0.norm.weight",
                        "blocks.0.norm.bias"]
    assert keys[-2:] == ["head.weight", "head.bias"] and len(keys) == 14
    back = lm.from_torch(lm.to_torch(params, model=model), like=(model, (4,)))
    chex_equal = jax.tree.map(lambda a, b: np.array_equal(a, b), params, back)
    assert all(jax.tree.leaves(chex_equal))
    assert back["blocks"]["fc"]["W"].shape == (3, 4, 4)


def test_forward_equals_numpy_and_parallel_names_its_branches():
    model = lm.serial(both=lm.parallel(left=lm.Dense(3), right=lm.Dense(3, act="relu")),
                      add=lm.Add())
    _, params = model.init(jax.random.key(2), (5,))
    assert list(params["both"]) == ["left", "right"]
    x = np.random.default_rng(1).normal(size=(5,)).astype(np.float32)
    left, right = (np.asarray(params["both"][k]["W"]) for k in ("left", "right"))
    lb, rb = (np.asarray(params["both"][k]["b"]) for k in ("left", "right"))
    want = left @ x + lb + np.maximum(right @ x + rb, 0)
    np.testing.assert_allclose(np.asarray(model.apply(params, x)), want, rtol=1e-5, atol=1e-6)
    out = model.layers[0].apply(params["both"], x)
    assert isinstance(out, tuple) and len(out) == 2  # the branches' outputs stay a tuple


def test_inserting_a_layer_renumbers_nothing(tmp_path):
    before = lm.serial(hidden=lm.Dense(8, act="relu"), out=lm.Dense(2))
    after = lm.serial(hidden=lm.Dense(8, act="relu"), drop=lm.Dropout(0.1), out=lm.Dense(2))
    _, old = before.init(jax.random.key(0), (4,))
    lm.save(tmp_path / "old.safetensors", old)
    _, like = after.init(jax.random.key(1), (4,))
    loaded = lm.load(tmp_path / "old.safetensors", like=like)
    np.testing.assert_array_equal(loaded["out"]["W"], old["out"]["W"])
    x = jnp.arange(4.0)
    np.testing.assert_allclose(after.apply(loaded, x), before.apply(old, x), rtol=1e-6)
    rules = {r"hidden\..*": "frozen", r"out\.W": "decay"}
    want = {"hidden": {"W": "frozen", "b": "frozen"}, "out": {"W": "decay", "b": "plain"}}
    assert lm.param_labels(old, rules, "plain") == want
    assert lm.param_labels(loaded, rules, "plain") == {**want, "drop": ()}  # the same rules still fit


def test_saves_and_rebuilds_and_replace_can_name_a_model(tmp_path):
    model = lm.serial(enc=lm.stack(lm.Dense(4, act="relu"), 2), out=lm.Dense(2))
    _, params = model.init(jax.random.key(0), (4,))
    lm.save(tmp_path / "m.safetensors", params, model=model)
    rebuilt, loaded = lm.load_model(tmp_path / "m.safetensors")
    assert rebuilt == model and repr(rebuilt) == repr(model)
    x = jnp.ones(4)
    np.testing.assert_array_equal(rebuilt.apply(loaded, x), model.apply(params, x))
    positional = lm.mlp([4, 2])
    named = positional.replace(names=("hidden", "out"))
    assert named == lm.serial(hidden=lm.Dense(4, act="relu"), out=lm.Dense(2))
    assert positional.config() == {"layers": positional.layers}  # files as before names
    # The file's structure check reads the names: a tuple where a dict belongs is refused.
    lm.save(tmp_path / "wrong.safetensors", (params["enc"], params["out"]), model=model)
    with pytest.raises(ValueError, match=r"expects a dict with keys \['enc', 'out'\]"):
        lm.load_model(tmp_path / "wrong.safetensors")


def test_bad_names_and_bad_params_are_refused_by_name():
    with pytest.raises(TypeError, match=r"serial: takes its layers all by position or all by "
                       r"name, not both: got 1 by position and \['b'\] by name"):
        lm.serial(lm.Dense(2), b=lm.Dense(2))
    with pytest.raises(TypeError, match=r"parallel: a layer's name must be a non-empty string "
                       r"without '\.', got 'a\.b'"):
        lm.parallel(**{"a.b": lm.Dense(2)})
    with pytest.raises(TypeError, match=r"serial: argument head must be a lamina Layer, got int"):
        lm.serial(head=3)
    model = lm.serial(a=lm.Dense(2), b=lm.Dense(2))
    _, params = model.init(jax.random.key(0), (3,))
    with pytest.raises(ValueError, match=r"expected params as a dict with keys \['a', 'b'\] "
                       r"\(one per layer\), got tuple"):
        model.apply((params["a"], params["b"]), jnp.ones(3))
    with pytest.raises(ValueError, match=r"got a dict with keys \['a'\]"):
        model.apply({"a": params["a"]}, jnp.ones(3))


def test_a_named_model_passes_check_layer_and_traces_by_name():
    model = lm.serial(proj=lm.Dense(4), norm=lm.LayerNorm(), act=lm.Relu())
    lm.testing.check_layer(model, (3,))
    _, params = model.init(jax.random.key(0), (3,))
    steps = lm.trace(model, params, jnp.ones(3))
    assert [s.index for s in steps] == [("proj",), ("norm",), ("act",)]
    assert [s.path for s in steps] == ["serial[proj]", "serial[norm]", "serial[act]"]


def test_megatron_rules_alternate_in_the_order_the_layers_run():
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    # "up" runs first: split by rows, then "down" by columns, though jax
    # flattens the dict with "down" first.
    model = lm.serial(up=lm.Dense(8, act="relu"), down=lm.Dense(4))
    _, params = model.init(jax.random.key(0), (4,))
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    for placed in (lm.shard_params(params, mesh, model=model),
                   lm.shard_params(params, mesh),
                   lm.shard_params(jax.tree.map(lambda a: a, params), mesh, model=model)):
        assert placed["up"]["W"].sharding.spec == P("model", None)
        assert placed["up"]["b"].sharding.spec == P("model")
        assert placed["down"]["W"].sharding.spec == P(None, "model")
        assert placed["down"]["b"].sharding.spec == P()


def test_params_alone_of_a_named_model_ask_for_the_model_and_errors_name_the_layer():
    model = lm.serial(attn=lm.MultiHeadAttention(2), head=lm.Dense(3))
    _, params = model.init(jax.random.key(0), (5, 4))
    # A dict of layers cannot be told from one layer's params: never guessed.
    with pytest.raises(ValueError, match=r"Pass model= to name every layer's counterpart"):
        lm.to_torch(params)
    keys = list(lm.to_torch(params, model=model))
    assert keys[:2] == ["attn.in_proj_weight", "attn.in_proj_bias"]
    bad = {"attn": params["attn"], "head": {"W": params["head"]["W"].T, "b": params["head"]["b"]}}
    with pytest.raises(ValueError, match=r"serial\[head\]"):
        lm.check_params(model, bad, (5, 4))


def test_names_are_distinct_and_tied_takes_positions():
    with pytest.raises(TypeError, match=r"serial: needs one distinct name per layer, got names "
                       r"\['a', 'a'\]"):
        lm.serial.from_config({"layers": (lm.Dense(2), lm.Dense(2)), "names": ("a", "a")})
    with pytest.raises(TypeError, match=r"tied: takes its layers by position, got \['norm'\]"):
        lm.tied(lm.Embedding(5, 4), norm=lm.LayerNorm())
