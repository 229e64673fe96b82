"""Whole torch models move to lamina and back with lm.from_torch / lm.to_torch, no permutation."""

import numpy as np
import pytest
import torch
from torch import nn

import lamina as lm


def _outputs_agree(model, params, net, xs, state=None, atol=1e-5):
    net.eval()
    with torch.no_grad():
        want = net(torch.as_tensor(xs)).numpy()
    got = lm.forward(model)(params, xs) if state is None else lm.forward(model)(
        params, xs, state=state)[0]
    np.testing.assert_allclose(np.asarray(got), want, atol=atol)


def _round_trip(model, params, net, state=None):
    tensors = lm.to_torch(params, like=net.state_dict(), state=state, model=model)
    assert list(tensors) == list(net.state_dict())
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(tensors[k], v.numpy(), err_msg=k)


def test_a_torch_cnn_including_the_linear_after_flatten():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(8, 4, 3, stride=2), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 3 * 3, 10))
    net.train()
    for _ in range(2):
        net(torch.randn(4, 3, 16, 16))
    model = lm.serial(lm.Conv(8, 3, padding=1), lm.BatchNorm(), lm.Relu(), lm.MaxPool(2),
                      lm.Conv(4, 3, stride=2, act="relu"), lm.Flatten(), lm.Dense(10))
    params, state = lm.from_torch(net.state_dict(), like=(model, (3, 16, 16)))
    xs = np.random.default_rng(0).normal(size=(5, 3, 16, 16)).astype(np.float32)
    _outputs_agree(model, params, net, xs, state)
    _round_trip(model, params, net, state)


@pytest.mark.parametrize("norm_first", [True, False])
def test_a_transformer_encoder_layer_whose_keys_run_in_another_order(norm_first):
    torch.manual_seed(1)
    net = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True,
                                     norm_first=norm_first)
    model = lm.TransformerEncoderLayer(4, 32, norm_first=norm_first)
    params = lm.from_torch(net.state_dict(), like=(model, (6, 16)))
    xs = np.random.default_rng(1).normal(size=(3, 6, 16)).astype(np.float32)
    _outputs_agree(model, params, net, xs)
    _round_trip(model, params, net)


class _Tokens(nn.Module):
    """Embedding, two encoder layers, a head: a small language model in torch."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.blocks = nn.Sequential(*(nn.TransformerEncoderLayer(
            16, 2, 32, dropout=0.0, batch_first=True, norm_first=True) for _ in range(2)))
        self.head = nn.Linear(16, 20)

    def forward(self, ids):
        return self.head(self.blocks(self.embed(ids)))


def test_a_small_language_model_with_named_children():
    torch.manual_seed(2)
    net = _Tokens()
    model = lm.serial(lm.Embedding(20, 16), lm.TransformerEncoderLayer(2, 32),
                      lm.TransformerEncoderLayer(2, 32), lm.Dense(20))
    params = lm.from_torch(net.state_dict(), like=(model, (7,)))
    ids = np.random.default_rng(2).integers(0, 20, size=(3, 7)).astype(np.int64)
    net.eval()
    with torch.no_grad():
        want = net(torch.as_tensor(ids)).numpy()
    np.testing.assert_allclose(lm.forward(model)(params, ids.astype(np.int32)), want, atol=1e-5)
    _round_trip(model, params, net)


@pytest.mark.parametrize("torch_cls, lamina_cls", [(nn.LSTM, lm.LSTM), (nn.GRU, lm.GRU)])
def test_recurrent_layers_then_a_head(torch_cls, lamina_cls):
    torch.manual_seed(3)
    rnn, head = torch_cls(5, 8, batch_first=True), nn.Linear(8, 2)
    model = lm.serial(lamina_cls(8), lm.Dense(2))
    state_dict = {**{f"0.{k}": v for k, v in rnn.state_dict().items()},
                  **{f"1.{k}": v for k, v in head.state_dict().items()}}
    params = lm.from_torch(state_dict, like=(model, (6, 5)))
    xs = np.random.default_rng(3).normal(size=(4, 6, 5)).astype(np.float32)
    with torch.no_grad():
        want = head(rnn(torch.as_tensor(xs))[0]).numpy()
    np.testing.assert_allclose(lm.forward(model)(params, xs), want, atol=1e-5)


def test_group_and_rms_norm_in_a_sequential():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv1d(4, 6, 3), nn.GroupNorm(2, 6), nn.Flatten(), nn.Linear(6 * 8, 5),
                        nn.RMSNorm(5, eps=1e-6))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # not ones and zeros
    model = lm.serial(lm.Conv(6, 3), lm.GroupNorm(2), lm.Flatten(), lm.Dense(5), lm.RMSNorm())
    params = lm.from_torch(net.state_dict(), like=(model, (4, 10)))
    xs = np.random.default_rng(4).normal(size=(3, 4, 10)).astype(np.float32)
    _outputs_agree(model, params, net, xs)
    _round_trip(model, params, net)


def test_a_mismatch_names_the_torch_key_and_the_lamina_layer():
    net = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    with pytest.raises(lm.LaminaError, match=r"torch 'linear1.weight' has shape \(32, 16\), but "
                       r"lamina .* \(TransformerEncoderLayer\) expects \(24, 16\)"):
        lm.from_torch(net.state_dict(), like=(lm.TransformerEncoderLayer(4, 24), (6, 16)))


def test_transposed_convolution_pooling_and_attention_on_their_own():
    torch.manual_seed(5)
    net = nn.Sequential(nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1),
                        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    model = lm.serial(lm.ConvTranspose(4, 3, stride=2, padding=1, output_padding=1),
                      lm.AvgPool(2), lm.Flatten(), lm.Dense(5))
    params = lm.from_torch(net.state_dict(), like=(model, (3, 4, 4)))
    xs = np.random.default_rng(5).normal(size=(2, 3, 4, 4)).astype(np.float32)
    _outputs_agree(model, params, net, xs)
    _round_trip(model, params, net)

    attention = nn.MultiheadAttention(8, 2, batch_first=True)
    model = lm.MultiHeadAttention(2, causal=True)
    params = lm.from_torch(attention.state_dict(), like=(model, (5, 8)))
    x = np.random.default_rng(6).normal(size=(3, 5, 8)).astype(np.float32)
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)  # True: may not attend
    with torch.no_grad():
        want = attention(*(torch.as_tensor(x),) * 3, need_weights=False, attn_mask=mask)[0]
    np.testing.assert_allclose(lm.forward(model)(params, x), want.numpy(), atol=1e-5)
    _round_trip(model, params, attention)
