"""What lamina could change about its CNN and attention on XLA:CPU: layouts, dot forms, flags.

Times, inside `jax.jit`, the forward and the loss's value and gradient of
the two models of `models.py` (same weights, batches and losses) in several
hand-written forms and in two prototypes of a changed lamina, built from
lamina's own layers by subclassing (lamina's source is not touched):

- CNN: lamina as it is (NCHW, PyTorch's layout), the same convolutions
  and poolings written by hand in NCHW, the floor (NHWC inside the jitted
  function), and lamina with `Conv`, `MaxPool` or both transposing
  its one example to channels-last, and computing convolution, bias and
  activation (the pooling's reduction) there before moving back
  (`ChannelsLastConv`, `ChannelsLastMaxPool`): the layers keep their NCHW
  interface and params; XLA cancels the transposes that meet between
  layers.
- Transformer block: lamina as it is (`jax.nn.dot_product_attention` on
  (T, heads, 64)), the floor (two batched `lax.dot_general`s on (heads, T,
  64)), the floor's math with `jax.nn.dot_product_attention` or with
  `einsum`s instead, and lamina with a `MultiHeadAttention` that computes
  attention as the floor does (`HeadsMajorAttention`), in the same
  `lm.serial` as `lm.TransformerEncoderLayer` builds.

Every variant is checked against the NumPy reference. Variants run
round-robin, one call each per round; the table gives each one's median
time, the median over rounds of its time / the floor's in the same round,
and `=` where its compiled HLO is the floor's (names and parameter order
aside).

`--flags` runs lamina and the floor again in fresh processes under each
XLA_FLAGS setting of `FLAGS` (the flags that exist in this jaxlib and change
what XLA:CPU compiles here), twice each, interleaved.

`--paired N` times the two proposals (`MaxPool` channels-last; heads-major
attention) beside lamina as it is, paired with the floor in N rounds by
bench.py's machinery, forward and Adam step.

    python benchmarks/model_layouts.py [--rounds 20] [--paired 10] [--flags]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402

import lamina as lm  # noqa: E402

FLAGS = {
    "default": "",
    "no YNNPACK fusions": "--xla_cpu_experimental_ynn_fusion_type=",
    "single-thread Eigen": "--xla_cpu_multi_thread_eigen=false",
}
"""XLA_FLAGS settings. In jax 0.10.2 `--xla_cpu_use_thunk_runtime` is "no longer
supported" (ignored), and `--xla_cpu_use_onednn`, `--xla_cpu_use_xnnpack` and
`--xla_cpu_experimental_onednn_custom_call` leave the compiled HLO as it is;
an empty `--xla_cpu_experimental_ynn_fusion_type` turns off the YNNPACK
fusions XLA:CPU now puts around dots."""

_CHANNELS_LAST = {1: ("NWC", "OIW", "NWC"), 2: ("NHWC", "OIHW", "NHWC"),
                  3: ("NDHWC", "OIDHW", "NDHWC")}


class ChannelsLastConv(lm.Conv):
    """lm.Conv computed channels-last (a prototype of a change to lamina).

    The example moves to (*spatial, C) before the convolution; the bias and
    the activation are applied there too, and only the activation's output
    moves back to (C, *spatial). Between two such layers (or a
    ChannelsLastMaxPool) the move back and the next move forward meet, and
    XLA removes both; the NHWC chain then compiles as one YNNPACK fusion.
    """

    def _forward(self, params, x):
        from lamina._src.layers.activations import activation_fn
        from lamina._src.layers.windows import per_axis

        x, W, b = self._checked(params, x)
        n = x.ndim - 1
        self._output_spatial(x.shape, n)
        z = lax.conv_general_dilated(
            jnp.moveaxis(x, 0, -1)[None], W, window_strides=per_axis(self.stride, n),
            padding=self._pads(n), rhs_dilation=per_axis(self.dilation, n),
            dimension_numbers=_CHANNELS_LAST[n], feature_group_count=self.groups)[0]
        if b is not None:
            z = z + b
        return jnp.moveaxis(z, -1, 0), jnp.moveaxis(activation_fn(self.act)(z), -1, 0)

    def apply(self, params, x, *, key=None):
        return self._forward(params, x)[1]

    def trace(self, params, x, *, key=None):
        from lamina._src.layers.activations import resolve_activation

        z, y = self._forward(params, x)
        act = resolve_activation(self.act)[1]
        return y, [lm.TraceStep("", (), self.name, x, params, z, y, self, act)]


class ChannelsLastMaxPool(lm.MaxPool):
    """lm.MaxPool reducing its example channels-last (a prototype of a change)."""

    def _reduce(self, x, window, stride, padding):
        def last(t):  # the channel entry moves from the front to the back
            return tuple(t[1:]) + (t[0],)

        y = lax.reduce_window(jnp.moveaxis(x, 0, -1), np.array(-np.inf, x.dtype), lax.max,
                              last(window), last(stride), last(padding))
        return jnp.moveaxis(y, -1, 0)


class HeadsMajorAttention(lm.MultiHeadAttention):
    """lm.MultiHeadAttention with attention as two dot_generals on (heads, T, H)."""

    def apply(self, params, x, *, key=None):
        T, D = x.shape
        self._check_params(params, D)
        n, h = self.num_heads, D // self.num_heads
        q, k, v = (jnp.transpose(a.reshape(T, n, h), (1, 0, 2))
                   for a in jnp.split(lm.dense(params["qkv"], x), 3, axis=-1))
        s = lax.dot_general(q, k, (((2,), (2,)), ((0,), (0,)))) * h ** -0.5
        o = lax.dot_general(jax.nn.softmax(s, axis=-1), v, (((2,), (1,)), ((0,), (0,))))
        return lm.dense(params["out"], jnp.transpose(o, (1, 0, 2)).reshape(T, D))


def _lamina(model, params):
    return (lambda p, x: jax.vmap(model.apply, in_axes=(None, 0))(p, x)), params


def cnn_serial(conv, pool):
    """lamina's CNN with these Conv and MaxPool classes."""
    return lm.serial(conv(32, 3, padding=1, act="relu"), pool(2),
                     conv(64, 3, padding=1, act="relu"), pool(2), lm.Flatten(), lm.Dense(10))


def heads_major_block():
    """The lm.serial TransformerEncoderLayer(4, 1024) builds, with HeadsMajorAttention."""
    return lm.serial(
        lm.residual(lm.serial(lm.LayerNorm(), HeadsMajorAttention(models.HEADS))),
        lm.residual(lm.serial(lm.LayerNorm(), lm.Dense(models.FF, "relu"), lm.Dense(models.D))))


def cnn_variants(w):
    base = models.CnnLamina(w)
    model, params = base.model, base.params

    def nchw(p, xs):
        h = xs
        for c in ("0", "3"):
            h = lax.conv_general_dilated(h, p[f"{c}.weight"], (1, 1), [(1, 1), (1, 1)],
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
            h = jax.nn.relu(h + p[f"{c}.bias"][:, None, None])
            h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
        return models._dense(h.reshape(h.shape[0], -1), p["7.weight"], p["7.bias"])

    return {
        "floor: NHWC inside": (models.CnnFloor.batched_apply, w),
        "lamina as is (NCHW)": _lamina(model, params),
        "hand-written NCHW": (nchw, w),
        "lamina, channels-last Conv": _lamina(cnn_serial(ChannelsLastConv, lm.MaxPool), params),
        "lamina, channels-last MaxPool": _lamina(cnn_serial(lm.Conv, ChannelsLastMaxPool), params),
        "lamina, channels-last Conv+MaxPool": _lamina(
            cnn_serial(ChannelsLastConv, ChannelsLastMaxPool), params),
    }


def transformer_variants(w):
    base = models.TransformerLamina(w)
    D, HEADS = models.D, models.HEADS

    def with_attention(attend):
        # the floor's block with another attention on (B, T, heads, 64)
        return lambda p, x: models.encoder_block(p, x, attend)

    def einsum(q, k, v):
        s = jnp.einsum("btnh,bsnh->bnts", q, k) * (D // HEADS) ** -0.5
        return jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(s, axis=-1), v)

    return {
        "floor: heads-major dot_general": (models.TransformerFloor.batched_apply, w),
        "lamina as is (dot_product_attention)": _lamina(base.model, base.params),
        "hand-written, jax.nn.dot_product_attention": (
            with_attention(jax.nn.dot_product_attention), w),
        "hand-written, einsum softmax": (with_attention(einsum), w),
        "lamina, heads-major attention": _lamina(heads_major_block(), base.params),
    }


VARIANTS = {"cnn": cnn_variants, "transformer": transformer_variants}


class ProposedCnn(models.CnnLamina):
    """lamina's CNN with the one change proposed: MaxPool reduces channels-last."""

    name = "lamina, channels-last MaxPool"

    def make_model(self, weights):
        return cnn_serial(lm.Conv, ChannelsLastMaxPool)


class ProposedTransformer(models.TransformerLamina):
    """lamina's block with the one change proposed: heads-major attention."""

    name = "lamina, heads-major attention"

    def make_model(self, weights):
        return heads_major_block()

    def make_params(self, weights):
        block = self.lm.TransformerEncoderLayer(models.HEADS, models.FF)  # the same params tree
        like = jax.eval_shape(lambda: block.init(jax.random.key(0), (models.T, models.D))[1])
        return block.params_from_torch(weights, like)


PROPOSED = {"cnn": ProposedCnn, "transformer": ProposedTransformer}


def paired(rounds, block_seconds=0.25):
    """The proposals beside lamina and the floor, timed as models.py times (Adam step too)."""
    import bench

    rng = np.random.default_rng(0)
    results = {}
    for shape in VARIANTS:
        weights = models.make_weights(shape)
        shared = models.on_device(weights)
        built = {"jax": models.MODELS[shape]["jax"](shared),
                 "lamina": models.MODELS[shape]["lamina"](shared),
                 "proposed": PROPOSED[shape](shared)}
        models.check_forward(shape, built, weights, rng)
        batch = models.BATCH[shape]
        xs, ys = (jnp.asarray(a) for a in models.make_batch(shape, batch, rng))
        work = {f"forward b={batch}": lambda impl, d: (lambda: impl.forward(d)),
                f"adam step b={batch}": lambda impl, d: impl.train_step}
        for metric, make in work.items():
            results[(shape, metric)] = bench.measure_workload(built, make, xs, ys, rounds,
                                                              block_seconds, rng)
    names = {"jax": "jax (hand-written)", "lamina": "lamina as is", "proposed": "lamina, proposed"}
    labels = {shape: shape for shape in VARIANTS}
    rows = bench.summarize(results, names, labels)
    print(f"\nPaired with the floor, {rounds} rounds:\n" + bench.format_table(rows))
    return rows
LOSSES = {"cnn": models.CnnFloor.batch_loss, "transformer": models.TransformerFloor.batch_loss}


def _program(f, args):
    """The compiled HLO of `f(*args)` without names, metadata or parameter order."""
    import re

    text = f.lower(*args).compile().as_text()
    lines = [re.sub(r", metadata=\{[^}]*\}", "", line) for line in text.splitlines()
             if line.startswith(("%", " ", "}")) and "parameter(" not in line]
    return [re.sub(r"%[\w.\-]+", "%", line) for line in lines]


def measure(shape, rounds, only=None):
    """{mode: {variant: (median ms, median ratio to the floor, same HLO as the floor)}}."""
    weights = models.make_weights(shape)
    w = models.on_device(weights)
    variants = VARIANTS[shape](w)
    if only:
        variants = {k: v for i, (k, v) in enumerate(variants.items()) if i in only}
    rng = np.random.default_rng(0)
    probe, _ = models.make_batch(shape, 2, rng)
    want = models.numpy_forward(shape, weights, probe)
    for name, (fn, p) in variants.items():
        got = np.asarray(jax.jit(fn)(p, jnp.asarray(probe)), np.float64)
        err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
        assert err < 1e-4, f"{shape} {name}: differs from NumPy by {err:.2e}"
    xs, ys = (jnp.asarray(a) for a in models.make_batch(shape, models.BATCH[shape], rng))
    loss = LOSSES[shape]
    out = {}
    for mode in ("forward", "loss value and grad"):
        calls = {}
        for name, (fn, p) in variants.items():
            if mode == "forward":
                f = jax.jit(fn)
            else:
                f = jax.jit(jax.value_and_grad(lambda p, x, y, fn=fn: loss(fn(p, x), y)))
            args = (p, xs) if mode == "forward" else (p, xs, ys)
            jax.block_until_ready(f(*args))
            calls[name] = (f, args)
        times = {name: [] for name in calls}
        for _ in range(rounds):
            for name, (f, args) in calls.items():
                start = time.perf_counter()
                jax.block_until_ready(f(*args))
                times[name].append(time.perf_counter() - start)
        floor = times[next(iter(times))]
        floor_hlo = _program(*calls[next(iter(calls))])
        out[mode] = {name: (statistics.median(t) * 1e3,
                            statistics.median(a / b for a, b in zip(t, floor)),
                            _program(*calls[name]) == floor_hlo)
                     for name, t in times.items()}
    return out


def print_table(shape, result, title=""):
    print(f"\n{shape}{title}: batch {models.BATCH[shape]}, median ms, and median per-round "
          f"ratio to the floor; = marks a program identical to the floor's ({jax.default_backend()})")
    for mode, rows in result.items():
        for name, (ms, ratio, same) in rows.items():
            print(f"  {mode:20s} {name:44s} {ms:8.1f} ms  {ratio:.3f} {'=' if same else ' '}")


def flags(rounds, repeats=2):
    """lamina and the floor under each XLA_FLAGS setting, in fresh processes."""
    found = {}
    for _ in range(repeats):
        for label, value in FLAGS.items():
            env = dict(os.environ, XLA_FLAGS=value)
            code = (f"import sys, json; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r});"
                    f"import model_layouts as m;"
                    f"print(json.dumps({{s: m.measure(s, {rounds}, only=(0, 1)) for s in m.VARIANTS}}))")
            done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                  text=True, check=True)
            found.setdefault(label, []).append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"\nXLA_FLAGS: median ms over {repeats} processes of {rounds} rounds each "
          f"(lamina / floor in brackets)")
    for label, runs in found.items():
        for shape in VARIANTS:
            for mode in runs[0][shape]:
                names = list(runs[0][shape][mode])
                ms = [statistics.median(r[shape][mode][n][0] for r in runs) for n in names]
                ratio = statistics.median(r[shape][mode][names[1]][1] for r in runs)
                print(f"  {label:20s} {shape:12s} {mode:20s} floor {ms[0]:7.1f} ms, "
                      f"lamina {ms[1]:7.1f} ms ({ratio:.3f})")
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--shapes", default="cnn,transformer")
    parser.add_argument("--flags", action="store_true", help="also the XLA_FLAGS settings")
    parser.add_argument("--paired", type=int, default=0, metavar="ROUNDS",
                        help="also time the proposals paired with the floor, as models.py does")
    args = parser.parse_args(argv)
    results = {}
    for shape in args.shapes.split(","):
        results[shape] = measure(shape, args.rounds)
        print_table(shape, results[shape])
    if args.paired:
        results["paired"] = paired(args.paired)
    if args.flags:
        results["flags"] = flags(max(5, args.rounds // 2))
    return results


if __name__ == "__main__":
    main()
