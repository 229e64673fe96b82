"""Real models ported whole: written with lamina's public layers only, equal to torch.

The references are written in plain torch, module for module as
torchvision writes them (its PyPI wheel is a CUDA build that does not
import with the CPU torch here), so their state dicts carry torchvision's
keys. Each port loads the reference's weights with `lm.from_torch`, matches
its outputs, and survives `lm.save(model=)` / `lm.load_model`.
"""

from collections import OrderedDict

import jax
import numpy as np
import pytest
import torch
from torch import nn

import lamina as lm

pytestmark = pytest.mark.slow


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
        lm.Conv(width, 3, stride=stride, padding=1, use_bias=False), lm.BatchNorm(), lm.Relu(),
        lm.Conv(width, 3, padding=1, use_bias=False), lm.BatchNorm(),
    )
    if not project:
        return lm.serial(lm.residual(main), lm.Relu())
    shortcut = lm.serial(lm.Conv(width, 1, stride=stride, use_bias=False), lm.BatchNorm())
    return lm.serial(lm.parallel(main, shortcut), lm.Add(), lm.Relu())


def resnet18(classes):
    """ResNet-18 from lamina's layers: the stem, four stages of two basic blocks, the head."""
    stages = []
    for i, width in enumerate((64, 128, 256, 512)):
        stride = 1 if i == 0 else 2
        stages += [_basic_block(width, stride, project=i > 0), _basic_block(width, 1, False)]
    return lm.serial(
        lm.Conv(64, 7, stride=2, padding=3, use_bias=False), lm.BatchNorm(), lm.Relu(),
        lm.MaxPool(3, stride=2, padding=1),
        *stages,
        lm.AdaptiveAvgPool((1, 1)), lm.Flatten(), lm.Dense(classes),
    )


def test_resnet18_equals_torchvisions_in_eval_and_train_mode_and_rebuilds_from_a_file(tmp_path):
    torch.manual_seed(0)
    net = _ResNet18(10)
    net.train()
    with torch.no_grad():  # running statistics away from their initial 0 and 1
        for _ in range(2):
            net(torch.randn(4, 3, 64, 64) * 2 + 0.5)
    model = resnet18(10)
    params, state = lm.from_torch(net.state_dict(), like=(model, (3, 64, 64)))
    assert lm.param_shapes(model, (3, 64, 64))[0] == (10,)
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
    back = lm.to_torch(params, like=net.state_dict(), state=new_state, model=model)
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

    back = lm.to_torch(params, like=net.state_dict(), model=model, key_map=VIT_KEYS)
    assert list(back) == list(net.state_dict())
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)

    lm.save(tmp_path / "vit.safetensors", params, model=model)
    rebuilt, loaded = lm.load_model(tmp_path / "vit.safetensors")
    assert rebuilt == model
    np.testing.assert_array_equal(np.asarray(lm.forward(rebuilt)(loaded, xs)), np.asarray(got))
