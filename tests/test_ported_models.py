"""Real models ported whole: written with lamina's public layers only, equal to torch.

The references are written in plain torch, module for module as
torchvision writes them (its PyPI wheel is a CUDA build that does not
import with the CPU torch here), so their state dicts carry torchvision's
keys. Each port loads the reference's weights with `lm.from_torch`, matches
its outputs, and survives `lm.save(model=)` / `lm.load_model`.
"""

import math
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

import lamina as lm

pytestmark = pytest.mark.slow


def _round_trips(model, params, net, tmp_path, inputs, got, key_map=None):
    """to_torch gives torch's state dict back; the model and params rebuild from a file."""
    back = lm.to_torch(params, like=net.state_dict(), model=model, key_map=key_map)
    assert list(back) == list(net.state_dict())
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)
    lm.save(tmp_path / "model.safetensors", params, model=model)
    rebuilt, loaded = lm.load_model(tmp_path / "model.safetensors")
    assert rebuilt == model
    np.testing.assert_array_equal(np.asarray(lm.forward(rebuilt)(loaded, inputs)),
                                  np.asarray(got))


class _BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class _ResNet18(nn.Module):
    """torchvision.models.resnet18, same module names."""

    def __init__(self, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, cin = (64, 128, 256, 512), 64
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(_BasicBlock(cin, width, stride),
                                                          _BasicBlock(width, width, 1)))
            cin = width
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _basic_block(width, stride, project):
    main = lm.serial(
        conv1=lm.Conv(width, 3, stride=stride, padding=1, use_bias=False), bn1=lm.BatchNorm(),
        relu=lm.Relu(), conv2=lm.Conv(width, 3, padding=1, use_bias=False), bn2=lm.BatchNorm(),
    )
    downsample = lm.Identity()
    if project:
        downsample = lm.serial(lm.Conv(width, 1, stride=stride, use_bias=False), lm.BatchNorm())
    return lm.serial(lm.parallel(main=main, downsample=downsample), lm.Add(), lm.Relu())


def resnet18(classes):
    """ResNet-18 from lamina's layers, named as torchvision names its modules."""
    stages = {}
    for i, width in enumerate((64, 128, 256, 512)):
        stride = 1 if i == 0 else 2
        stages[f"layer{i + 1}"] = lm.serial(_basic_block(width, stride, project=i > 0),
                                            _basic_block(width, 1, False))
    return lm.serial(
        conv1=lm.Conv(64, 7, stride=2, padding=3, use_bias=False), bn1=lm.BatchNorm(),
        relu=lm.Relu(), maxpool=lm.MaxPool(3, stride=2, padding=1),
        **stages,
        avgpool=lm.AdaptiveAvgPool((1, 1)), flatten=lm.Flatten(), fc=lm.Dense(classes),
    )


# torchvision's block computes `relu(main(x) + downsample(x))` in its forward;
# lamina writes that sum as layers, `serial(parallel(main=..., downsample=...),
# Add(), Relu())`, which puts the block's modules one level down.
RESNET_KEYS = [(r"^(layer\d\.\d)\.downsample\.", r"\1.0.downsample."),
               (r"^(layer\d\.\d)\.(conv|bn)", r"\1.0.main.\2")]


def test_resnet18_equals_torchvisions_in_eval_and_train_mode_and_rebuilds_from_a_file(tmp_path):
    torch.manual_seed(0)
    net = _ResNet18(10)
    net.train()
    with torch.no_grad():  # running statistics away from their initial 0 and 1
        for _ in range(2):
            net(torch.randn(4, 3, 64, 64) * 2 + 0.5)
    model = resnet18(10)
    params, state = lm.from_torch(net.state_dict(), like=(model, (3, 64, 64)),
                                  key_map=RESNET_KEYS)
    assert lm.param_shapes(model, (3, 64, 64))[0] == (10,)
    assert params["fc"]["W"].shape == (10, 512)
    assert params["layer2"][0][0]["main"]["conv1"]["W"].shape == (128, 64, 3, 3)
    assert params["layer2"][0][0]["downsample"][0]["W"].shape == (128, 64, 1, 1)
    n_torch = sum(p.numel() for p in net.parameters())
    assert lm.summary(model, (3, 64, 64)).params == n_torch == 11_181_642

    xs = np.random.default_rng(0).normal(size=(3, 3, 64, 64)).astype(np.float32)
    fwd = lm.forward(model)
    net.eval()
    with torch.no_grad():
        want = net(torch.as_tensor(xs)).numpy()
    got, _ = fwd(params, xs, state=state)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-4, rtol=1e-4)

    # Train mode: batch statistics, and the running statistics torch updates.
    net.train()
    with torch.no_grad():
        want_train = net(torch.as_tensor(xs)).numpy()
    got_train, new_state = fwd(params, xs, state=state, train=True)
    np.testing.assert_allclose(np.asarray(got_train), want_train, atol=2e-4, rtol=1e-4)
    back = lm.to_torch(params, like=net.state_dict(), state=new_state, model=model,
                       key_map=RESNET_KEYS)
    assert list(back) == list(net.state_dict())
    for key, value in net.state_dict().items():
        np.testing.assert_allclose(back[key], value.numpy(), atol=1e-5, rtol=1e-5, err_msg=key)

    lm.save(tmp_path / "resnet18.safetensors", params, model=model)
    lm.save(tmp_path / "resnet18_state.safetensors", new_state)
    rebuilt, loaded = lm.load_model(tmp_path / "resnet18.safetensors")
    loaded_state = lm.load(tmp_path / "resnet18_state.safetensors")
    assert rebuilt == model
    again, _ = lm.forward(rebuilt)(loaded, xs, state=loaded_state)
    net.eval()
    with torch.no_grad():
        want_after = net(torch.as_tensor(xs)).numpy()
    np.testing.assert_allclose(np.asarray(again), want_after, atol=2e-4, rtol=1e-4)


class _EncoderBlock(nn.Module):
    """torchvision.models.vision_transformer.EncoderBlock (pre-norm), without dropout."""

    def __init__(self, dim, heads, mlp):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Dropout(0.0),
                                 nn.Linear(mlp, dim), nn.Dropout(0.0))

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.self_attention(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _Encoder(nn.Module):
    def __init__(self, length, dim, heads, mlp, depth):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.randn(1, length, dim) * 0.02)
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", _EncoderBlock(dim, heads, mlp)) for i in range(depth)))
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        return self.ln(self.layers(x + self.pos_embedding))


class _ViT(nn.Module):
    """torchvision.models.VisionTransformer, same parameter names, at a small size."""

    def __init__(self, image, patch, dim, heads, mlp, depth, classes):
        super().__init__()
        self.conv_proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.class_token = nn.Parameter(torch.randn(1, 1, dim))  # torchvision: zeros
        self.encoder = _Encoder((image // patch) ** 2 + 1, dim, heads, mlp, depth)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(dim, classes)))

    def forward(self, x):
        x = self.conv_proj(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.heads(self.encoder(x)[:, 0])


def vit(patch, dim, heads, mlp, depth, classes):
    """A ViT from lamina's layers: patches, class token, positions, encoder layers, head."""
    return lm.serial(
        lm.Conv(dim, patch, stride=patch),                     # (D, H/p, W/p)
        lm.Reshape((dim, -1)), lm.Permute((1, 0)),             # (S, D)
        lm.ClassToken(), lm.PositionEmbedding(),               # (S + 1, D)
        lm.stack(lm.TransformerEncoderLayer(heads, mlp, act="gelu", eps=1e-6), depth),
        lm.LayerNorm(1e-6), lm.Take(0), lm.Dense(classes),
    )


# torchvision's names for torch's: a ViT block is a pre-norm TransformerEncoderLayer.
# The class token runs after the patch projection but is listed first: numbered
# names put the two in the order lamina runs them.
VIT_KEYS = [(r"^conv_proj\.", "0."), (r"^class_token$", "1.class_token"),
            (r"\.ln_1\.", ".norm1."), (r"\.self_attention\.", ".self_attn."),
            (r"\.ln_2\.", ".norm2."), (r"\.mlp\.0\.", ".linear1."), (r"\.mlp\.3\.", ".linear2.")]


def test_vit_equals_torchvisions_and_rebuilds_from_a_file(tmp_path):
    torch.manual_seed(1)
    net = _ViT(image=32, patch=8, dim=32, heads=4, mlp=64, depth=3, classes=10).eval()
    model = vit(patch=8, dim=32, heads=4, mlp=64, depth=3, classes=10)
    params = lm.from_torch(net.state_dict(), like=(model, (3, 32, 32)), key_map=VIT_KEYS)
    assert params[3]["token"].shape == (32,) and params[4]["embedding"].shape == (17, 32)
    assert lm.summary(model, (3, 32, 32)).params == sum(p.numel() for p in net.parameters())

    xs = np.random.default_rng(1).normal(size=(4, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.as_tensor(xs)).numpy()
    got = lm.forward(model)(params, xs)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)

    # Input gradients too: the whole model is differentiable as torch's.
    x = torch.as_tensor(xs[:1]).requires_grad_()
    net(x)[0, 3].backward()
    grad = jax.grad(lambda x: model.apply(params, x)[3])(xs[0])
    np.testing.assert_allclose(np.asarray(grad), x.grad[0].numpy(), atol=1e-4, rtol=1e-4)

    _round_trips(model, params, net, tmp_path, xs, got, key_map=VIT_KEYS)


class _Conv1D(nn.Module):
    """Hugging Face's Conv1D: a linear layer whose weight is stored (in, out)."""

    def __init__(self, out, inp):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(inp, out) * 0.02)
        self.bias = nn.Parameter(torch.randn(out) * 0.02)

    def forward(self, x):
        return x @ self.weight + self.bias


class _GPT2Attention(nn.Module):
    def __init__(self, dim, heads, positions):
        super().__init__()
        self.heads = heads
        self.c_attn = _Conv1D(3 * dim, dim)
        self.c_proj = _Conv1D(dim, dim)
        # Older transformers keep the causal mask as a buffer in the state dict.
        self.register_buffer("bias", torch.tril(torch.ones(positions, positions, dtype=torch.bool))
                             .view(1, 1, positions, positions))

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = (z.view(n, t, self.heads, -1).transpose(1, 2)
                   for z in self.c_attn(x).split(d, dim=2))
        scores = q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5
        scores = scores.masked_fill(~self.bias[:, :, :t, :t], torch.finfo(scores.dtype).min)
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, t, d)
        return self.c_proj(out)


class _GPT2Block(nn.Module):
    def __init__(self, dim, heads, positions):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = _GPT2Attention(dim, heads, positions)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Module()
        self.mlp.c_fc = _Conv1D(4 * dim, dim)
        self.mlp.c_proj = _Conv1D(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        hidden = nn.functional.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh")  # gelu_new
        return x + self.mlp.c_proj(hidden)


class _GPT2LMHead(nn.Module):
    """transformers' GPT2LMHeadModel, same names and layouts, its head tied to wte."""

    def __init__(self, vocab, positions, dim, heads, depth):
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(vocab, dim)
        self.transformer.wpe = nn.Embedding(positions, dim)
        self.transformer.h = nn.ModuleList(_GPT2Block(dim, heads, positions)
                                           for _ in range(depth))
        self.transformer.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def forward(self, ids):
        t = self.transformer
        x = t.wte(ids) + t.wpe(torch.arange(ids.shape[1]))
        for block in t.h:
            x = block(x)
        return self.lm_head(t.ln_f(x))


def gpt2(vocab, positions, dim, heads, depth):
    """GPT-2 from lamina's layers: tied token embedding, learned positions, causal blocks."""
    block = lm.TransformerEncoderLayer(heads, 4 * dim, act="gelu_tanh", causal=True)
    return lm.tied(lm.Embedding(vocab, dim), lm.PositionEmbedding(max_length=positions),
                   lm.stack(block, depth), lm.LayerNorm())


# Hugging Face's names for torch's: a GPT-2 block is a pre-norm, causal
# TransformerEncoderLayer whose Conv1D weights are stored transposed.
GPT2_KEYS = [
    (r"^lm_head\.weight$", None),        # the same tensor as wte: lm.tied shares it
    (r"\.attn\.(masked_)?bias$", None),  # the causal mask, a buffer
    (r"^transformer\.wte\.", "0."),
    (r"^transformer\.wpe\.weight$", "1.pos_embedding", "unsqueeze"),
    (r"^transformer\.h\.(\d+)\.", r"2.\1."),
    (r"^transformer\.ln_f\.", "3."),
    (r"\.ln_1\.", ".norm1."), (r"\.ln_2\.", ".norm2."),
    (r"\.attn\.c_attn\.weight$", ".self_attn.in_proj_weight", "transpose"),
    (r"\.attn\.c_attn\.bias$", ".self_attn.in_proj_bias"),
    (r"\.attn\.c_proj\.", ".self_attn.out_proj.", "transpose"),
    (r"\.mlp\.c_fc\.", ".linear1.", "transpose"),
    (r"\.mlp\.c_proj\.", ".linear2.", "transpose"),
]


def test_gpt2_equals_hugging_faces_with_its_head_tied_and_rebuilds_from_a_file(tmp_path):
    torch.manual_seed(2)
    net = _GPT2LMHead(vocab=50, positions=16, dim=32, heads=4, depth=2).eval()
    with torch.no_grad():  # LayerNorm's ones and zeros would not test the mapping
        for module in net.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    model = gpt2(vocab=50, positions=16, dim=32, heads=4, depth=2)
    params = lm.from_torch(net.state_dict(), like=(model, (10,)), key_map=GPT2_KEYS)
    # Every weight once: torch's parameters() lists the tied table once too.
    assert lm.summary(model, (10,), input_dtype=np.int32).params == sum(
        p.numel() for p in net.parameters())

    ids = np.random.default_rng(2).integers(0, 50, (3, 10)).astype(np.int32)
    with torch.no_grad():
        want = net(torch.as_tensor(ids, dtype=torch.long)).numpy()
    got = lm.forward(model)(params, ids)
    assert got.shape == (3, 10, 50)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)

    # Decoding one token at a time with the key-value cache gives torch's logits.
    step = jax.jit(lambda c, i: lm.decode_step(model, params, c, i))
    cache = lm.init_cache(model, params, max_length=16)
    for t in range(10):
        logits, cache = step(cache, ids[0, t])
        np.testing.assert_allclose(np.asarray(logits), want[0, t], atol=1e-5, rtol=1e-5)

    # The tied table's gradient sums the embedding's use and the head's.
    target = torch.as_tensor(ids[0, 1:], dtype=torch.long)
    logits = net(torch.as_tensor(ids[:1], dtype=torch.long))[0, :-1]
    nn.functional.cross_entropy(logits, target, reduction="sum").backward()

    def loss(p):
        out = model.apply(p, ids[0])[:-1]
        return -jnp.take_along_axis(jax.nn.log_softmax(out), ids[0, 1:, None], axis=1).sum()

    grads = jax.grad(loss)(params)
    np.testing.assert_allclose(np.asarray(grads[0]["W"]),
                               net.transformer.wte.weight.grad.numpy(), atol=1e-4, rtol=1e-4)

    back = lm.to_torch(params, like=net.state_dict(), model=model, key_map=GPT2_KEYS)
    kept = [k for k in net.state_dict() if k != "lm_head.weight" and not k.endswith(".attn.bias")]
    assert list(back) == kept
    for key in kept:
        np.testing.assert_array_equal(back[key], net.state_dict()[key].numpy(), err_msg=key)

    lm.save(tmp_path / "gpt2.safetensors", params, model=model)
    rebuilt, loaded = lm.load_model(tmp_path / "gpt2.safetensors")
    assert rebuilt == model
    np.testing.assert_array_equal(np.asarray(lm.forward(rebuilt)(loaded, ids)), np.asarray(got))
    head = lm.trace(model, params, ids[0])[-1]
    assert head.path == "tied[head]" and head.layer == lm.Dense(50, use_bias=False)
    np.testing.assert_allclose(np.asarray(head.output), want[0], atol=1e-5, rtol=1e-5)
    rows = lm.summary(model, (10,), input_dtype=np.int32, show=False).rows
    assert (rows[0].path, rows[0].params) == ("tied[0]", 50 * 32)
    assert (rows[-1].path, rows[-1].params) == ("tied[head]", 0)  # counted at the embedding


class _Seq2Seq(nn.Module):
    """An LSTM encoder-decoder: the encoder's final state starts the decoder."""

    def __init__(self, vocab, dim, hidden, layers):
        super().__init__()
        self.src_embed = nn.Embedding(vocab, dim)
        self.encoder = nn.LSTM(dim, hidden, layers, batch_first=True)
        self.tgt_embed = nn.Embedding(vocab, dim)
        self.decoder = nn.LSTM(dim, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, src, tgt):
        _, state = self.encoder(self.src_embed(src))
        return self.head(self.decoder(self.tgt_embed(tgt), state)[0])


def seq2seq(vocab, dim, hidden, layers):
    """`(source ids, target ids)` in, next-token logits out; lamina's layers only."""
    encoder = lm.serial(lm.Select(0), lm.Embedding(vocab, dim),
                        lm.LSTM(hidden, num_layers=layers, return_state=True),
                        lm.parallel(lm.Select("h_n"), lm.Select("c_n")))
    target = lm.serial(lm.Select(1), lm.Embedding(vocab, dim))
    return lm.serial(
        lm.parallel(encoder, target),         # ((h_n, c_n), target vectors)
        lm.parallel(lm.Select(1), lm.Select(0)),  # torch's decoder(input, hx)
        lm.LSTM(hidden, num_layers=layers), lm.Dense(vocab),
    )


def test_seq2seq_equals_torchs_and_rebuilds_from_a_file(tmp_path):
    torch.manual_seed(3)
    net = _Seq2Seq(vocab=20, dim=8, hidden=16, layers=2).eval()
    model = seq2seq(vocab=20, dim=8, hidden=16, layers=2)
    shapes = ((7,), (5,))
    params = lm.from_torch(net.state_dict(), like=(model, shapes))
    rng = np.random.default_rng(3)
    src = rng.integers(0, 20, (4, 7)).astype(np.int32)
    tgt = rng.integers(0, 20, (4, 5)).astype(np.int32)
    with torch.no_grad():
        want = net(torch.as_tensor(src, dtype=torch.long), torch.as_tensor(tgt, dtype=torch.long))
    got = lm.forward(model)(params, (src, tgt))
    np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-5, rtol=1e-5)
    _round_trips(model, params, net, tmp_path, (src, tgt), got)


def _timestep_embedding(t, dim):
    """diffusers' get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    angles = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class _ResnetBlock(nn.Module):
    """diffusers' ResnetBlock2D (no dropout): the timestep's vector shifts each channel."""

    def __init__(self, cin, cout, temb, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb):
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.time_emb_proj(nn.functional.silu(temb))[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class _Attention(nn.Module):
    """diffusers' Attention as a UNet2DModel's middle holds it: group norm, separate q, k and v.

    lamina's MultiHeadAttention packs q, k and v in one `in_proj_weight`,
    as torch's does: UNET_KEYS joins the three with "part" layouts.
    """

    def __init__(self, channels, heads, groups):
        super().__init__()
        self.heads = heads
        self.group_norm = nn.GroupNorm(groups, channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x):
        n, c, hh, ww = x.shape
        h = self.group_norm(x).reshape(n, c, hh * ww).transpose(1, 2)
        q, k, v = (f(h).reshape(n, hh * ww, self.heads, -1).transpose(1, 2)
                   for f in (self.to_q, self.to_k, self.to_v))
        h = nn.functional.scaled_dot_product_attention(q, k, v)
        h = self.to_out[1](self.to_out[0](h.transpose(1, 2).reshape(n, hh * ww, c)))
        return x + h.transpose(1, 2).reshape(n, c, hh, ww)


class _UNet(nn.Module):
    """A DDPM U-Net in diffusers' parts: one level down, a middle with attention, one up."""

    def __init__(self, c, groups, heads):
        super().__init__()
        self.c = c
        self.conv_in = nn.Conv2d(1, c, 3, padding=1)
        self.time_embedding = nn.Sequential(nn.Linear(c, 4 * c), nn.SiLU(), nn.Linear(4 * c, 4 * c))
        self.down = _ResnetBlock(c, c, 4 * c, groups)
        self.downsample = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.mid1 = _ResnetBlock(c, 2 * c, 4 * c, groups)
        self.mid_attn = _Attention(2 * c, heads, groups)
        self.mid2 = _ResnetBlock(2 * c, 2 * c, 4 * c, groups)
        self.upsample_conv = nn.Conv2d(2 * c, 2 * c, 3, padding=1)
        self.up = _ResnetBlock(3 * c, c, 4 * c, groups)
        self.conv_norm_out = nn.GroupNorm(groups, c)
        self.conv_out = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, x, t):
        temb = self.time_embedding(_timestep_embedding(t, self.c))
        skip = self.down(self.conv_in(x), temb)
        h = self.mid2(self.mid_attn(self.mid1(self.downsample(skip), temb)), temb)
        h = self.upsample_conv(nn.functional.interpolate(h, scale_factor=2, mode="nearest"))
        h = self.up(torch.cat([h, skip], dim=1), temb)
        return self.conv_out(nn.functional.silu(self.conv_norm_out(h)))


def unet(c, groups, heads, size):
    """The same U-Net from lamina's layers; `(image, timestep)` flows as a tuple `(h, temb)`."""

    def carry(block):  # (h, temb) -> (block((h, temb)), temb)
        return lm.parallel(block, lm.Select(1))

    def on_h(layer):  # (h, temb) -> (layer(h), temb)
        return lm.parallel(lm.serial(lm.Select(0), layer), lm.Select(1))

    def res(cout, cin):
        main = lm.serial(
            lm.parallel(lm.serial(lm.Select(0), lm.GroupNorm(groups), lm.Activation("silu"),
                                  lm.Conv(cout, 3, padding=1)),
                        lm.serial(lm.Select(1), lm.Activation("silu"), lm.Dense(cout),
                                  lm.Reshape((cout, 1, 1)))),
            lm.Add(), lm.GroupNorm(groups), lm.Activation("silu"), lm.Conv(cout, 3, padding=1))
        shortcut = lm.Select(0) if cin == cout else lm.serial(lm.Select(0), lm.Conv(cout, 1))
        return lm.serial(lm.parallel(main, shortcut), lm.Add())

    half = size // 2
    attn = lm.residual(lm.serial(
        lm.GroupNorm(groups), lm.Reshape((2 * c, -1)), lm.Permute((1, 0)),
        lm.MultiHeadAttention(heads), lm.Permute((1, 0)), lm.Reshape((2 * c, half, half))))
    stem = lm.parallel(
        lm.serial(lm.Select(0), lm.Conv(c, 3, padding=1)),
        lm.serial(lm.Select(1), lm.Timesteps(c, flip_sin_to_cos=True, downscale_freq_shift=0),
                  lm.Dense(4 * c, act="silu"), lm.Dense(4 * c)))
    inner = lm.serial(
        on_h(lm.Conv(c, 3, stride=2, padding=1)),
        carry(res(2 * c, c)), on_h(attn), carry(res(2 * c, 2 * c)),
        on_h(lm.serial(lm.Upsample(2), lm.Conv(2 * c, 3, padding=1))))
    join = lm.parallel(  # ((h, temb), (skip, temb)) -> (concat(h, skip), temb)
        lm.serial(lm.parallel(lm.serial(lm.Select(0), lm.Select(0)),
                              lm.serial(lm.Select(1), lm.Select(0))), lm.Concat(axis=0)),
        lm.serial(lm.Select(0), lm.Select(1)))
    return lm.serial(
        stem, carry(res(c, c)), lm.parallel(inner, lm.Identity()), join, carry(res(c, 3 * c)),
        lm.Select(0), lm.GroupNorm(groups), lm.Activation("silu"), lm.Conv(1, 3, padding=1))


UNET_KEYS = [(r"\.to_q\.(weight|bias)$", r".attn.in_proj_\1", "part 0/3"),
             (r"\.to_k\.(weight|bias)$", r".attn.in_proj_\1", "part 1/3"),
             (r"\.to_v\.(weight|bias)$", r".attn.in_proj_\1", "part 2/3"),
             (r"\.to_out\.0\.", ".attn.out_proj.")]


def test_ddpm_unet_equals_torchs_and_rebuilds_from_a_file(tmp_path):
    torch.manual_seed(4)
    net = _UNet(c=16, groups=4, heads=2).eval()
    with torch.no_grad():  # GroupNorm's ones and zeros would not test the mapping
        for module in net.modules():
            if isinstance(module, nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    model = unet(c=16, groups=4, heads=2, size=8)
    shapes = ((1, 8, 8), ())
    params = lm.from_torch(net.state_dict(), like=(model, shapes), key_map=UNET_KEYS)
    assert lm.summary(model, shapes, show=False).params == sum(p.numel() for p in net.parameters())
    rng = np.random.default_rng(4)
    xs = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    ts = np.array([0, 17, 999], np.int32)
    with torch.no_grad():
        want = net(torch.as_tensor(xs), torch.as_tensor(ts)).numpy()
    got = lm.forward(model)(params, (xs, ts))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)
    x = torch.as_tensor(xs[:1]).requires_grad_()
    net(x, torch.as_tensor(ts[:1]))[0, 0, 3, 4].backward()
    grad = jax.grad(lambda a: model.apply(params, (a, ts[0]))[0, 3, 4])(xs[0])
    np.testing.assert_allclose(np.asarray(grad), x.grad[0].numpy(), atol=1e-4, rtol=1e-4)
    _round_trips(model, params, net, tmp_path, (xs, ts), got, key_map=UNET_KEYS)
