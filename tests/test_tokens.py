"""ClassToken, PositionEmbedding and Take against torch and NumPy, and their errors;
from_torch/to_torch's key_map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

import lamina as lm


def _randn(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_class_token_goes_first_on_every_sequence():
    token, x = _randn(6), _randn(3, 2, 4, 6, seed=1)   # a batch of 3, leading axis 2
    got = lm.forward(lm.ClassToken())({"token": token}, x)
    want = torch.cat([torch.as_tensor(token).expand(3, 2, 1, 6), torch.as_tensor(x)], dim=-2)
    np.testing.assert_array_equal(np.asarray(got), want.numpy())
    out_shape, params = lm.ClassToken().init(jax.random.key(0), (4, 6))
    assert out_shape == (5, 6)
    np.testing.assert_array_equal(params["token"], np.zeros(6))  # torchvision draws zeros


def test_position_embedding_adds_the_first_rows_of_its_table():
    table, x = _randn(8, 4), _randn(2, 5, 4, seed=1)
    got = lm.forward(lm.PositionEmbedding(max_length=8))({"embedding": table}, x)
    np.testing.assert_allclose(np.asarray(got), x + table[None, :5], rtol=1e-6)
    _, params = lm.PositionEmbedding().init(jax.random.key(0), (500, 64))
    assert params["embedding"].shape == (500, 64)
    assert abs(float(jnp.std(params["embedding"])) - 0.02) < 1e-3   # torchvision's normal(0.02)


def test_take_equals_numpy_indexing_and_its_gradient_is_one_hot():
    x = _randn(3, 4, 5)
    np.testing.assert_array_equal(np.asarray(lm.forward(lm.Take(0))((), x)), x[:, 0])
    np.testing.assert_array_equal(np.asarray(lm.forward(lm.Take(-1, axis=1))((), x)),
                                  x[:, :, -1])
    grad = jax.grad(lambda v: lm.Take(2).apply((), v).sum())(x[0])
    np.testing.assert_array_equal(np.asarray(grad), np.eye(4)[2][:, None] * np.ones(5))


@pytest.mark.parametrize("layer, shape, message", [
    (lm.ClassToken(), (6,), r"ClassToken\(\): expected an input_shape with at least 2 "
                            r"dimension\(s\), got \(6,\)"),
    (lm.PositionEmbedding(max_length=4), (5, 3),
     r"the input has 5 positions, more than the table's max_length=4"),
    (lm.Take(3), (3, 2), r"Take\(3\): index 3 is out of range for axis 0 of size 3"),
    (lm.Take(0, axis=2), (3, 2), r"axis 2 is not an axis of one example of shape \(3, 2\)"),
])
def test_bad_inputs_are_refused_at_init(layer, shape, message):
    with pytest.raises(ValueError, match=message):
        layer.init(jax.random.key(0), shape)


def test_a_table_drawn_for_one_length_refuses_another():
    _, params = lm.PositionEmbedding().init(jax.random.key(0), (5, 4))
    with pytest.raises(ValueError, match=r"expected embedding of shape \(3, D\) for sequences of "
                                         r"3 positions .*give max_length.*got \(5, 4\)"):
        lm.PositionEmbedding().apply(params, jnp.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"expects a sequence of vectors, one example of shape "
                                         r"\(S, D\), got input shape \(6,\)"):
        lm.ClassToken().apply({"token": jnp.zeros(6)}, jnp.zeros(6))


def test_bad_configuration_is_refused():
    with pytest.raises(TypeError, match=r"max_length must be an int >= 1 or None, got float"):
        lm.PositionEmbedding(max_length=2.0)
    with pytest.raises(ValueError, match=r"max_length must be >= 1, got 0"):
        lm.PositionEmbedding(max_length=0)
    with pytest.raises(TypeError, match=r"Take: index must be an int, got str"):
        lm.Take("0")


class _Vit(nn.Module):
    def __init__(self):
        super().__init__()
        self.class_token = nn.Parameter(torch.randn(1, 1, 4))
        self.proj = nn.Linear(3, 4)


def test_torch_tensors_carry_a_leading_axis_of_one_that_lamina_drops():
    net = _Vit()
    model = lm.serial(lm.Dense(4), lm.ClassToken())
    keys = [("^class_token$", "1.class_token"), ("^proj", "0")]
    params = lm.from_torch(net.state_dict(), like=(model, (2, 3)), key_map=keys)
    np.testing.assert_array_equal(params[1]["token"], net.class_token.detach().numpy()[0, 0])
    np.testing.assert_array_equal(params[0]["W"], net.proj.weight.detach().numpy())
    back = lm.to_torch(params, like=net.state_dict(), model=model, key_map=keys)
    assert back["class_token"].shape == (1, 1, 4) and list(back) == list(net.state_dict())

    bad = {**net.state_dict(), "class_token": torch.zeros(1, 4)}
    with pytest.raises(ValueError, match=r"torch '1.class_token' has shape \(1, 4\), but lamina "
                                         r"'1.token' \(ClassToken\) expects \(1, 1, 4\)"):
        lm.from_torch(bad, like=(model, (2, 3)), key_map=keys)


def test_without_the_key_map_the_order_mismatch_is_named():
    with pytest.raises(ValueError, match=r"torch module '' holds \['class_token'\], but lamina "
                                         r"'0' \(Dense\)"):
        lm.from_torch(_Vit().state_dict(), like=(lm.serial(lm.Dense(4), lm.ClassToken()), (2, 3)))


def test_key_map_as_a_function_drops_the_keys_it_maps_to_none():
    net = nn.Sequential(nn.Linear(3, 2))
    net.register_buffer("mask", torch.ones(2, 2))   # as GPT-2's attention bias buffers
    model = lm.Dense(2)

    def keys(key):
        return None if key == "mask" else key.removeprefix("0.")

    params = lm.from_torch(net.state_dict(), like=(model, (3,)), key_map=keys)
    np.testing.assert_array_equal(params["b"], net[0].bias.detach().numpy())
    back = lm.to_torch(params, like=net.state_dict(), model=model, key_map=keys)
    assert list(back) == ["0.weight", "0.bias"]


def test_a_layout_that_does_not_fit_is_refused_not_applied():
    _, params = lm.Dense(2).init(jax.random.key(0), (3,))
    with pytest.raises(ValueError, match=r"key_map gives torch 'weight' the layout 'unsqueeze', "
                                         r"but its lamina tensor has shape \(2, 3\), without a "
                                         r"leading axis of one"):
        lm.to_torch(params, like=["weight", "bias"], model=lm.Dense(2),
                    key_map=[("weight", "weight", "unsqueeze")])


class _SeparateQKV(nn.Module):
    """Attention with q, k and v projected apart, as diffusers' Attention holds them."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def forward(self, x):
        n, length, dim = x.shape
        q, k, v = (f(x).reshape(n, length, self.heads, -1).transpose(1, 2)
                   for f in (self.to_q, self.to_k, self.to_v))
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.to_out[0](out.transpose(1, 2).reshape(n, length, dim))


QKV_KEYS = [(r"^to_q\.(weight|bias)$", r"in_proj_\1", "part 0/3"),
            (r"^to_k\.(weight|bias)$", r"in_proj_\1", "part 1/3"),
            (r"^to_v\.(weight|bias)$", r"in_proj_\1", "part 2/3"),
            (r"^to_out\.0\.", "out_proj.")]


def test_parts_join_separate_projections_into_one_packed_tensor_and_split_back():
    torch.manual_seed(0)
    net = _SeparateQKV(8, 2).eval()
    state = net.state_dict()
    shuffled = {k: state[k] for k in ("to_v.weight", "to_out.0.weight", "to_k.bias", "to_q.weight",
                                      "to_q.bias", "to_v.bias", "to_k.weight", "to_out.0.bias")}
    model = lm.MultiHeadAttention(2)
    params = lm.from_torch(shuffled, like=(model, (5, 8)), key_map=QKV_KEYS)
    want = torch.cat([state["to_q.weight"], state["to_k.weight"], state["to_v.weight"]]).numpy()
    np.testing.assert_array_equal(params["qkv"]["W"], want)  # q, k, v in part order
    x = _randn(3, 5, 8)
    with torch.no_grad():
        expected = net(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(np.asarray(lm.forward(model)(params, x)), expected,
                               atol=1e-5, rtol=1e-5)
    back = lm.to_torch(params, like=state, model=model, key_map=QKV_KEYS)
    assert list(back) == list(state)
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)
    by_keys = lm.to_torch(params, like=list(state), model=model, key_map=QKV_KEYS)  # equal split
    np.testing.assert_array_equal(by_keys["to_k.weight"], state["to_k.weight"].numpy())


def test_parts_that_cannot_be_split_back_are_refused():
    _, params = lm.Dense(3).init(jax.random.key(0), (2,))
    with pytest.raises(ValueError, match=r"to_torch \(keys after key_map\): key_map splits a "
                                         r"lamina tensor of shape \(3, 2\) into 2 parts along "
                                         r"its first axis \('a', 'b'\), which it cannot be"):
        lm.to_torch(params, like=["a", "b", "bias"], model=lm.Dense(3),
                    key_map=[("^a$", "weight", "part 0/2"), ("^b$", "weight", "part 1/2")])


@pytest.mark.parametrize("key_map, error, message", [
    ([("0", "x"), ("2", "x")], ValueError, r"key_map maps both '0.weight' and '2.weight' to "
                                            r"'x.weight'"),
    ([("(", "x")], ValueError, r"key_map holds a bad pattern"),
    ({"0": "1"}, TypeError, r"key_map must be a function of a torch key or a list of "
                            r"\(pattern, replacement\) or \(pattern, replacement, layout\) rules"),
    ([("0", "1", "flip")], TypeError, r"key_map must be .* rules \(replacement None drops the "
                                      r"key\), layout in \('transpose', 'unsqueeze', 'part I/N'\), "
                                      r"got \[\('0', '1', 'flip'\)\]"),
    (lambda key: 3, TypeError, r"key_map\('0.weight'\) must return a str, a \(str, layout\) "
                               r"pair with layout in \('transpose', 'unsqueeze', 'part I/N'\), "
                               r"or None, got 3"),
    ([("0.weight", "w", "part 0/2"), ("0.bias", "w", "part 2/2")], TypeError,
     r"key_map must be .* layout in .* got \[\('0.weight', 'w', 'part 0/2'\), \('0.bias', 'w', 'part 2/2'\)\]"),
    ([("^0", "2", "part 0/2")], ValueError, r"key_map maps both '0.weight' and '2.weight' to "
                                            r"'2.weight' \(only parts may share a key\)"),
    ([("0.weight", "x", "part 0/2"), ("0.bias", "x", "part 0/2")], ValueError,
     r"key_map gives '0.bias' the layout 'part 0/2', but 'x' already has that part: "
     r"\['0.weight'\]"),
    ([("0.weight", "x", "part 0/2"), ("0.bias", "x", "part 1/3")], ValueError,
     r"key_map gives '0.bias' the layout 'part 1/3', but 'x' already has 2 parts"),
    ([("0.weight", "x", "part 1/3"), ("0.bias", "x", "part 0/3")], ValueError,
     r"key_map gives 'x' parts \[0, 1\] of 3, but no key for part 2"),
    ([("0.weight", "x", "part 0/2"), ("^0.bias", "x", "part 1/2")], ValueError,
     r"key_map joins '0.weight', '0.bias' along their first axis, but their shapes "
     r"\[\(2, 2\), \(2,\)\] differ after it"),
])
def test_bad_key_maps_are_refused(key_map, error, message):
    state = {k: np.ones(shape, np.float32)
             for k, shape in (("0.weight", (2, 2)), ("0.bias", (2,)), ("2.weight", (2, 2)))}
    with pytest.raises(error, match=r"from_torch: " + message):
        lm.from_torch(state, like=(lm.mlp([2, 2]), (2,)), key_map=key_map)
