"""A CNN and a transformer block in lamina, hand-written JAX and other libraries.

The same two models in every implementation, built from one set of weights
in PyTorch's layouts (the state-dict names of the torch model) and checked
against a float64 NumPy forward before anything is timed:

- `cnn`: one 3x32x32 channels-first image per example, batch 256:
  Conv(32, 3, padding 1) + ReLU, MaxPool(2), Conv(64, 3, padding 1) + ReLU,
  MaxPool(2), Flatten (channels, then rows, then columns, as torch), Dense(10).
  The Adam step's loss is softmax cross-entropy with integer labels.
- `transformer`: one pre-norm encoder block, T=128 positions of D=256
  features, 4 heads of 64, feed-forward 1024 with ReLU, batch 32:
  `x + attn(norm1(x))`, then `x + linear2(relu(linear1(norm2(x))))`, as
  `torch.nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0,
  batch_first=True, norm_first=True)`. The Adam step's loss is the mean
  squared error of the block's output against a fixed random target.

Every implementation gets the same NCHW (or (B, T, D)) input arrays; what
each does with them inside its jitted function is its own choice:

- `jax (hand-written)`, the floor, is the fastest plain JAX found for each
  model (see `model_layouts.py`): the CNN transposes the batch to NHWC once
  inside the jitted function and back before the flatten, since XLA:CPU's
  NCHW convolutions and poolings are several times slower; the attention
  is two batched `lax.dot_general`s in heads-major (B, heads, T, 64) form.
  It reads the very same weight arrays as lamina.
- `lamina`: `lm.serial(lm.Conv(32, 3, padding=1, act="relu"), lm.MaxPool(2),
  lm.Conv(64, 3, padding=1, act="relu"), lm.MaxPool(2), lm.Flatten(),
  lm.Dense(10))` and `lm.TransformerEncoderLayer(4, 1024)`, through
  `lm.forward` and `lm.train_step`.
- `flax.linen`: `nn.Conv`/`nn.max_pool`/`nn.Dense` on NHWC (the module
  transposes the NCHW input first, inside the jitted apply, as the floor
  does; its kernels are HWIO copies and its Dense reads the flatten in
  H, W, C order), and `nn.LayerNorm`, `nn.MultiHeadDotProductAttention`,
  `nn.Dense`.
- `equinox (filter_jit)`: `eqx.nn.Conv2d`/`MaxPool2d`/`Linear` and
  `eqx.nn.LayerNorm`/`MultiheadAttention`/`Linear`, one example at a time
  under `jax.vmap`, as Equinox is written.
- `pytorch (eager)`: `nn.Sequential(Conv2d, ReLU, MaxPool2d, Conv2d, ReLU,
  MaxPool2d, Flatten, Linear)` and `nn.TransformerEncoderLayer`, forward
  under `torch.inference_mode()` (the transformer then takes torch's fused
  fast path), Adam via `torch.optim.Adam`; torch uses all cores.

Timing is bench.py's: paired blocks with the floor, median ratio with its
95% interval, lamina refined to +-`--precision`; cold compile is a fresh
process's first batch-1 forward.

    python benchmarks/models.py --json benchmarks/results-2026-11-29-models.json
    python benchmarks/models.py --quick        # a smoke run, small batches
    python benchmarks/models.py --shapes cnn --impls jax,lamina,torch
    python benchmarks/models.py --show benchmarks/results-2026-11-29-models.json
"""

from __future__ import annotations

import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import impls  # noqa: E402

IMAGE = (3, 32, 32)
T, D, HEADS, FF = 128, 256, 4, 1024
EPS = 1e-5
BATCH = {"cnn": 256, "transformer": 32}
QUICK_BATCH = {"cnn": 8, "transformer": 2}
LABELS = {
    "cnn": "cnn 3x32x32, conv32-pool-conv64-pool-dense10",
    "transformer": f"transformer block T={T} D={D} {HEADS} heads ff={FF}",
}
IMPLS = {"jax": None, "lamina": None, "flax.linen": "flax", "equinox": "equinox", "torch": "torch"}
"""key -> the module it needs (None: always there)."""

NHWC = ("NHWC", "OIHW", "NHWC")  # torch's OIHW kernels, channels-last activations


# ---------------------------------------------------------------- weights, data, reference


def make_weights(shape, seed=0):
    """NumPy float32 weights under the torch model's state-dict names."""
    rng = np.random.default_rng(seed)

    def u(fan_in, *dims):
        return (rng.uniform(-1, 1, dims) / np.sqrt(fan_in)).astype(np.float32)

    if shape == "cnn":
        return {"0.weight": u(27, 32, 3, 3, 3), "0.bias": u(27, 32),
                "3.weight": u(288, 64, 32, 3, 3), "3.bias": u(288, 64),
                "7.weight": u(4096, 10, 4096), "7.bias": u(4096, 10)}
    w = {"self_attn.in_proj_weight": u(D, 3 * D, D), "self_attn.in_proj_bias": u(D, 3 * D),
         "self_attn.out_proj.weight": u(D, D, D), "self_attn.out_proj.bias": u(D, D),
         "linear1.weight": u(D, FF, D), "linear1.bias": u(D, FF),
         "linear2.weight": u(FF, D, FF), "linear2.bias": u(FF, D)}
    for norm in ("norm1", "norm2"):  # not the identity, so a swapped scale shows
        w[f"{norm}.weight"] = (1 + rng.uniform(-0.5, 0.5, D)).astype(np.float32)
        w[f"{norm}.bias"] = rng.uniform(-0.5, 0.5, D).astype(np.float32)
    return w


def on_device(weights):
    """The weights as JAX arrays, to share between implementations."""
    return {k: jnp.asarray(v) for k, v in weights.items()}


def make_batch(shape, batch, rng):
    """`(inputs, targets)`: labels for the CNN, a regression target for the block."""
    if shape == "cnn":
        return (rng.normal(size=(batch,) + IMAGE).astype(np.float32),
                rng.integers(0, 10, size=batch))
    return (rng.normal(size=(batch, T, D)).astype(np.float32),
            rng.normal(size=(batch, T, D)).astype(np.float32))


def numpy_forward(shape, weights, xs):
    """The reference: float64 NumPy, independent of every library timed."""
    w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    x = np.asarray(xs, np.float64)
    if shape == "cnn":
        for conv in ("0", "3"):
            padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
            patches = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
            x = np.einsum("bchwij,ocij->bohw", patches, w[f"{conv}.weight"])
            x = np.maximum(x + w[f"{conv}.bias"][:, None, None], 0)
            b, c, h, wd = x.shape
            x = x.reshape(b, c, h // 2, 2, wd // 2, 2).max(axis=(3, 5))
        return x.reshape(len(x), -1) @ w["7.weight"].T + w["7.bias"]

    def norm(h, name):
        mean = h.mean(-1, keepdims=True)
        var = ((h - mean) ** 2).mean(-1, keepdims=True)
        return (h - mean) / np.sqrt(var + EPS) * w[f"{name}.weight"] + w[f"{name}.bias"]

    def heads(a):  # (B, T, D) -> (B, heads, T, D // heads)
        return a.reshape(a.shape[0], T, HEADS, -1).transpose(0, 2, 1, 3)

    h = norm(x, "norm1")
    q, k, v = np.split(h @ w["self_attn.in_proj_weight"].T + w["self_attn.in_proj_bias"], 3, -1)
    s = heads(q) @ heads(k).transpose(0, 1, 3, 2) / np.sqrt(D // HEADS)
    p = np.exp(s - s.max(-1, keepdims=True))
    o = (p / p.sum(-1, keepdims=True)) @ heads(v)
    o = o.transpose(0, 2, 1, 3).reshape(x.shape)
    x = x + o @ w["self_attn.out_proj.weight"].T + w["self_attn.out_proj.bias"]
    h = np.maximum(norm(x, "norm2") @ w["linear1.weight"].T + w["linear1.bias"], 0)
    return x + h @ w["linear2.weight"].T + w["linear2.bias"]


def _mse(outputs, targets):
    return jnp.mean(optax.squared_error(outputs, targets))


def _dense(h, W, b):
    """`h @ W.T + b` over the last axis of `h`, W in torch's (out, in) layout."""
    return lax.dot_general(h, W, (((h.ndim - 1,), (1,)), ((), ()))) + b


# ---------------------------------------------------------------- the CNN


class CnnFloor(impls.JaxImpl):
    """Plain jax.jit, NHWC inside: the fastest hand-written form found on XLA:CPU."""

    name = "jax (hand-written)"

    def make_params(self, weights):
        return dict(weights)  # the same arrays, by torch name

    @staticmethod
    def batched_apply(p, xs):
        h = jnp.transpose(xs, (0, 2, 3, 1))
        for conv in ("0", "3"):
            h = lax.conv_general_dilated(h, p[f"{conv}.weight"], (1, 1), [(1, 1), (1, 1)],
                                         dimension_numbers=NHWC)
            h = jax.nn.relu(h + p[f"{conv}.bias"])
            h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        h = jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)  # torch's flatten order
        return _dense(h, p["7.weight"], p["7.bias"])


class CnnLamina(impls.Lamina):
    def make_model(self, weights):
        lm = self.lm
        return lm.serial(lm.Conv(32, 3, padding=1, act="relu"), lm.MaxPool(2),
                         lm.Conv(64, 3, padding=1, act="relu"), lm.MaxPool(2),
                         lm.Flatten(), lm.Dense(10))

    def make_params(self, weights):
        def layer(i):
            return {"W": weights[f"{i}.weight"], "b": weights[f"{i}.bias"]}

        return (layer(0), (), layer(3), (), (), layer(7))


class CnnFlax(impls.JaxImpl):
    """flax.linen on NHWC: the NCHW batch is transposed inside the jitted apply."""

    name = "flax.linen"

    def __init__(self, weights):
        import flax.linen as nn

        class CNN(nn.Module):
            @nn.compact
            def __call__(self, x):
                x = jnp.transpose(x, (0, 2, 3, 1))
                for features in (32, 64):
                    x = nn.relu(nn.Conv(features, (3, 3), padding=1)(x))
                    x = nn.max_pool(x, (2, 2), strides=(2, 2))
                return nn.Dense(10)(x.reshape(x.shape[0], -1))

        self.module = CNN()
        super().__init__(weights)

    def make_params(self, weights):
        dense = np.asarray(weights["7.weight"]).reshape(10, 64, 8, 8)  # flatten order C, H, W
        return {"params": {
            "Conv_0": {"kernel": jnp.transpose(weights["0.weight"], (2, 3, 1, 0)),
                       "bias": weights["0.bias"]},
            "Conv_1": {"kernel": jnp.transpose(weights["3.weight"], (2, 3, 1, 0)),
                       "bias": weights["3.bias"]},
            "Dense_0": {"kernel": jnp.asarray(dense.transpose(2, 3, 1, 0).reshape(4096, 10)),
                        "bias": weights["7.bias"]},
        }}

    def batched_apply(self, params, xs):
        return self.module.apply(params, xs)


class CnnEquinox(impls.Equinox):
    def make_model(self, weights):
        eqx = self.eqx

        class CNN(eqx.Module):
            conv1: eqx.nn.Conv2d
            conv2: eqx.nn.Conv2d
            pool: eqx.nn.MaxPool2d
            fc: eqx.nn.Linear

            def __call__(self, x):
                x = self.pool(jax.nn.relu(self.conv1(x)))
                x = self.pool(jax.nn.relu(self.conv2(x)))
                return self.fc(jnp.ravel(x))

        keys = jax.random.split(jax.random.key(0), 3)
        model = CNN(eqx.nn.Conv2d(3, 32, 3, padding=1, key=keys[0]),
                    eqx.nn.Conv2d(32, 64, 3, padding=1, key=keys[1]),
                    eqx.nn.MaxPool2d(2, 2), eqx.nn.Linear(4096, 10, key=keys[2]))
        return eqx.tree_at(
            lambda m: (m.conv1.weight, m.conv1.bias, m.conv2.weight, m.conv2.bias,
                       m.fc.weight, m.fc.bias), model,
            (weights["0.weight"], jnp.reshape(weights["0.bias"], (-1, 1, 1)),
             weights["3.weight"], jnp.reshape(weights["3.bias"], (-1, 1, 1)),
             weights["7.weight"], weights["7.bias"]))


class CnnTorch(impls.Torch):
    def make_module(self, weights):
        nn = self.torch.nn
        model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Flatten(), nn.Linear(4096, 10))
        return _load_torch(self.torch, model, weights)


def _load_torch(torch, model, weights):
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
    return model


# ---------------------------------------------------------------- the transformer block


class _Regression:
    """The block's loss: mean squared error against a target of its output's shape."""

    batch_loss = staticmethod(_mse)
    loss_fn = staticmethod(optax.squared_error)  # lamina's, per element; the step takes the mean


class TransformerFloor(_Regression, impls.JaxImpl):
    """Plain jax.jit: batched dot_generals, attention heads-major (B, heads, T, 64)."""

    name = "jax (hand-written)"

    def make_params(self, weights):
        return dict(weights)

    @staticmethod
    def batched_apply(p, x):
        return encoder_block(p, x, heads_major_attention)


def heads_major_attention(q, k, v):
    """softmax(q k^T / sqrt(H)) v over (B, T, heads, H), computed on (B, heads, T, H)."""
    q, k, v = (jnp.transpose(a, (0, 2, 1, 3)) for a in (q, k, v))
    s = lax.dot_general(q, k, (((3,), (3,)), ((0, 1), (0, 1)))) * q.shape[-1] ** -0.5
    o = lax.dot_general(jax.nn.softmax(s, axis=-1), v, (((3,), (2,)), ((0, 1), (0, 1))))
    return jnp.transpose(o, (0, 2, 1, 3))


def encoder_block(p, x, attend):
    """The pre-norm block on a batch (B, T, D), by hand; `attend(q, k, v)` on (B, T, heads, H)."""
    def norm(h, name):
        mean = jnp.mean(h, -1, keepdims=True)
        var = jnp.mean(jnp.square(h - mean), -1, keepdims=True)
        return (h - mean) * lax.rsqrt(var + EPS) * p[f"{name}.weight"] + p[f"{name}.bias"]

    qkv = _dense(norm(x, "norm1"), p["self_attn.in_proj_weight"], p["self_attn.in_proj_bias"])
    q, k, v = (a.reshape(a.shape[0], T, HEADS, D // HEADS) for a in jnp.split(qkv, 3, axis=-1))
    o = attend(q, k, v).reshape(x.shape)
    x = x + _dense(o, p["self_attn.out_proj.weight"], p["self_attn.out_proj.bias"])
    h = jax.nn.relu(_dense(norm(x, "norm2"), p["linear1.weight"], p["linear1.bias"]))
    return x + _dense(h, p["linear2.weight"], p["linear2.bias"])


class TransformerLamina(_Regression, impls.Lamina):
    def make_model(self, weights):
        return self.lm.TransformerEncoderLayer(HEADS, FF)

    def make_params(self, weights):
        like = jax.eval_shape(lambda: self.model.init(jax.random.key(0), (T, D))[1])
        return self.model.params_from_torch(weights, like)  # the same arrays, placed


class TransformerFlax(_Regression, impls.JaxImpl):
    name = "flax.linen"

    def __init__(self, weights):
        import flax.linen as nn

        class Block(nn.Module):
            @nn.compact
            def __call__(self, x):
                h = nn.LayerNorm(epsilon=EPS, name="norm1")(x)
                x = x + nn.MultiHeadDotProductAttention(HEADS, qkv_features=D, name="attn")(h, h)
                h = nn.LayerNorm(epsilon=EPS, name="norm2")(x)
                return x + nn.Dense(D, name="linear2")(nn.relu(nn.Dense(FF, name="linear1")(h)))

        self.module = Block()
        super().__init__(weights)

    def make_params(self, w):
        qkv_w = np.split(np.asarray(w["self_attn.in_proj_weight"]), 3)
        qkv_b = np.split(np.asarray(w["self_attn.in_proj_bias"]), 3)
        attn = {name: {"kernel": jnp.asarray(W.T.reshape(D, HEADS, D // HEADS)),
                       "bias": jnp.asarray(b.reshape(HEADS, D // HEADS))}
                for name, W, b in zip(("query", "key", "value"), qkv_w, qkv_b)}
        attn["out"] = {"kernel": jnp.asarray(np.asarray(w["self_attn.out_proj.weight"]).T
                                             .reshape(HEADS, D // HEADS, D)),
                       "bias": w["self_attn.out_proj.bias"]}
        params = {"attn": attn}
        for norm in ("norm1", "norm2"):
            params[norm] = {"scale": w[f"{norm}.weight"], "bias": w[f"{norm}.bias"]}
        for linear in ("linear1", "linear2"):
            params[linear] = {"kernel": jnp.asarray(np.asarray(w[f"{linear}.weight"]).T),
                              "bias": w[f"{linear}.bias"]}
        return {"params": params}

    def batched_apply(self, params, xs):
        return self.module.apply(params, xs)


class TransformerEquinox(_Regression, impls.Equinox):
    def make_model(self, w):
        eqx = self.eqx

        class Block(eqx.Module):
            norm1: eqx.nn.LayerNorm
            attn: eqx.nn.MultiheadAttention
            norm2: eqx.nn.LayerNorm
            linear1: eqx.nn.Linear
            linear2: eqx.nn.Linear

            def __call__(self, x):
                h = jax.vmap(self.norm1)(x)
                x = x + self.attn(h, h, h)
                h = jax.vmap(self.norm2)(x)
                return x + jax.vmap(lambda t: self.linear2(jax.nn.relu(self.linear1(t))))(h)

        keys = jax.random.split(jax.random.key(0), 3)
        block = Block(eqx.nn.LayerNorm(D, eps=EPS),
                      eqx.nn.MultiheadAttention(HEADS, D, use_query_bias=True, use_key_bias=True,
                                                use_value_bias=True, use_output_bias=True,
                                                key=keys[0]),
                      eqx.nn.LayerNorm(D, eps=EPS),
                      eqx.nn.Linear(D, FF, key=keys[1]), eqx.nn.Linear(FF, D, key=keys[2]))
        qkv_w = jnp.split(w["self_attn.in_proj_weight"], 3)
        qkv_b = jnp.split(w["self_attn.in_proj_bias"], 3)
        return eqx.tree_at(
            lambda m: (m.attn.query_proj.weight, m.attn.key_proj.weight, m.attn.value_proj.weight,
                       m.attn.query_proj.bias, m.attn.key_proj.bias, m.attn.value_proj.bias,
                       m.attn.output_proj.weight, m.attn.output_proj.bias,
                       m.norm1.weight, m.norm1.bias, m.norm2.weight, m.norm2.bias,
                       m.linear1.weight, m.linear1.bias, m.linear2.weight, m.linear2.bias),
            block,
            (*qkv_w, *qkv_b, w["self_attn.out_proj.weight"], w["self_attn.out_proj.bias"],
             w["norm1.weight"], w["norm1.bias"], w["norm2.weight"], w["norm2.bias"],
             w["linear1.weight"], w["linear1.bias"], w["linear2.weight"], w["linear2.bias"]))


class TransformerTorch(impls.Torch):
    def make_module(self, weights):
        model = self.torch.nn.TransformerEncoderLayer(
            D, HEADS, FF, dropout=0.0, batch_first=True, norm_first=True)
        return _load_torch(self.torch, model, weights).eval()

    def batch_loss(self, outputs, targets):
        return self.torch.nn.functional.mse_loss(outputs, targets)

    def to_targets(self, ys):
        return self.to_device(ys)


MODELS = {
    "cnn": {"jax": CnnFloor, "lamina": CnnLamina, "flax.linen": CnnFlax,
            "equinox": CnnEquinox, "torch": CnnTorch},
    "transformer": {"jax": TransformerFloor, "lamina": TransformerLamina,
                    "flax.linen": TransformerFlax, "equinox": TransformerEquinox,
                    "torch": TransformerTorch},
}
NAMES = {k: cls.name for k, cls in MODELS["cnn"].items()}


def available():
    """Keys of IMPLS whose library imports here."""
    return [k for k, module in IMPLS.items() if module is None or importlib.util.find_spec(module)]


def build(shape, keys, weights):
    """The implementations of `shape`, all reading the same device arrays."""
    shared = on_device(weights)
    return {k: MODELS[shape][k](shared) for k in keys}


def compile_probe(key, shape):
    """For bench.cold_compile: one implementation and a batch-1 input."""
    impl = build(shape, [key], make_weights(shape))[key]
    xs, _ = make_batch(shape, 1, np.random.default_rng(0))
    return impl, impl.to_device(xs)


def check_forward(shape, built, weights, rng):
    """Raises unless every implementation's forward matches the NumPy reference.

    On a batch of --quick's size, so that a quick run compiles each forward once.
    """
    xs, _ = make_batch(shape, QUICK_BATCH[shape], rng)
    want = numpy_forward(shape, weights, xs)
    for impl in built.values():
        got = np.asarray(impl.forward(impl.to_device(xs)), np.float64)
        err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
        if not err < 1e-4:
            raise AssertionError(f"{shape} {impl.name}: forward differs from NumPy by {err:.2e}")


def run(keys, shapes, rounds, block_seconds, quick, compile_rounds, precision=0.0, max_factor=1):
    results = {}
    rng = np.random.default_rng(0)
    lamina_only = [k for k in keys if k == "lamina"]
    for shape in shapes:
        weights = make_weights(shape)
        built = build(shape, keys, weights)
        check_forward(shape, built, weights, rng)
        batch = (QUICK_BATCH if quick else BATCH)[shape]
        xs, ys = (jnp.asarray(a) for a in make_batch(shape, batch, rng))
        work = {f"forward b={batch}": lambda impl, d: (lambda: impl.forward(d)),
                f"adam step b={batch}": lambda impl, d: impl.train_step}
        for metric, make in work.items():
            results[(shape, metric)] = bench.measure_workload(
                built, make, xs, ys, rounds, block_seconds, rng, lamina_only, precision,
                rounds * max_factor)
            print(f"  {shape} {metric}: done", file=sys.stderr)
        if compile_rounds:
            jax_keys = [k for k in keys if IMPLS[k] != "torch"]
            samples, ratios = bench.paired_rounds(
                lambda k, partner: bench.cold_compile(k, shape, module="models"), jax_keys,
                compile_rounds, rng, lamina_only, precision, compile_rounds * max_factor)
            results[(shape, "cold compile b=1")] = (samples, {"ratios": ratios})
    return results


def main(argv=None):
    s, shown = bench.parse_settings(argv, __doc__.splitlines()[0], IMPLS, available(),
                                    list(MODELS), list(MODELS))
    if s is None:
        return shown
    if "torch" in s.keys:
        import torch

        torch.set_num_threads(os.cpu_count())
    results = run(s.keys, s.shapes, s.rounds, s.block_seconds, s.quick, s.compile_rounds,
                  s.precision, s.max_factor)
    meta = bench.run_meta(s.rounds, s.block_seconds, s.precision, s.max_factor,
                          s.compile_rounds, s.quick)
    meta["batch"] = QUICK_BATCH if s.quick else BATCH
    return bench.report(bench.summarize(results, NAMES, LABELS), meta, s.json)


if __name__ == "__main__":
    main()
