"""Does XLA:CPU run lamina's torch layout (NCHW/OIHW) as fast as NHWC/HWIO?

lamina keeps PyTorch's layouts so weights move without permutation; XLA:CPU's
convolution kernels are channels-last. This times, inside `jax.jit`, one
2-D convolution (batch 256, 3x32x32 in, 16 out, kernel 3, padding 1):

- `lamina NCHW (vmap)`: `jax.vmap(lm.Conv(16, 3, padding=1).apply)`, the way a
  lamina model runs a batch;
- `lax NCHW/OIHW`: the same convolution written directly on the batch;
- `lax NHWC/HWIO`: the channels-last layout, on arrays already in it;
- `NCHW -> NHWC inside`: torch-layout arrays in and out, transposed to
  channels-last around the convolution inside the jitted function;

each forward only and forward + gradient (params and input). Variants run
round-robin, one call each per round, so the machine's drift hits all alike;
the medians of 30 rounds are printed, with their ratio to `lax NHWC/HWIO`.

    python benchmarks/conv_layout.py [--rounds 30]
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import lamina as lm

BATCH, C_IN, SIZE, C_OUT, K = 256, 3, 32, 16, 3


def conv(x, W, layout):
    lhs, rhs = {"NCHW": ("NCHW", "OIHW"), "NHWC": ("NHWC", "HWIO")}[layout]
    return lax.conv_general_dilated(
        x, W, (1, 1), [(1, 1), (1, 1)], dimension_numbers=(lhs, rhs, lhs)
    )


def variants():
    layer = lm.Conv(C_OUT, K, padding=1)
    _, params = layer.init(jax.random.key(0), (C_IN, SIZE, SIZE))
    x = jax.random.normal(jax.random.key(1), (BATCH, C_IN, SIZE, SIZE))
    W, b = params["W"], params["b"]
    x_nhwc, W_hwio = jnp.transpose(x, (0, 2, 3, 1)), jnp.transpose(W, (2, 3, 1, 0))

    def lamina_vmap(p, x):
        return jax.vmap(layer.apply, in_axes=(None, 0))(p, x)

    def lax_nchw(p, x):
        return conv(x, p["W"], "NCHW") + p["b"][:, None, None]

    def lax_nhwc(p, x):
        return conv(x, p["W"], "NHWC") + p["b"]

    def transposed_inside(p, x):
        y = conv(jnp.transpose(x, (0, 2, 3, 1)), jnp.transpose(p["W"], (2, 3, 1, 0)), "NHWC")
        return jnp.transpose(y + p["b"], (0, 3, 1, 2))

    torch_layout = ({"W": W, "b": b}, x)
    return {
        "lamina NCHW (vmap)": (lamina_vmap, torch_layout),
        "lax NCHW/OIHW": (lax_nchw, torch_layout),
        "lax NHWC/HWIO": (lax_nhwc, ({"W": W_hwio, "b": b}, x_nhwc)),
        "NCHW -> NHWC inside": (transposed_inside, torch_layout),
    }


def loss_grad(fn):
    return jax.grad(lambda p, x: jnp.sum(fn(p, x) ** 2), argnums=(0, 1))


def main(rounds: int = 30) -> dict:
    results = {}
    base = variants()
    reference = np.asarray(base["lax NCHW/OIHW"][0](*base["lax NCHW/OIHW"][1]))
    for mode in ("forward", "forward + grad"):
        compiled = {}
        for name, (fn, args) in base.items():
            f = jax.jit(fn if mode == "forward" else loss_grad(fn))
            out = jax.block_until_ready(f(*args))  # compile and warm up
            if mode == "forward":
                got = np.asarray(out if out.shape[1] == C_OUT else jnp.transpose(out, (0, 3, 1, 2)))
                np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4)
            compiled[name] = (f, args)
        times = {name: [] for name in compiled}
        for _ in range(rounds):
            for name, (f, args) in compiled.items():
                start = time.perf_counter()
                jax.block_until_ready(f(*args))
                times[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(t) for name, t in times.items()}
        floor = medians["lax NHWC/HWIO"]
        print(f"{mode}: batch {BATCH}, {C_IN}x{SIZE}x{SIZE} -> {C_OUT}, kernel {K}, "
              f"median of {rounds} ({jax.devices()[0].platform})")
        for name, m in medians.items():
            print(f"  {name:22s} {m * 1e3:8.2f} ms  ({m / floor:.2f} x NHWC/HWIO)")
        results[mode] = medians
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    main(parser.parse_args().rounds)
