"""Python cost of tracing: lamina's forward and loss gradient against hand-written JAX.

Tracing is the Python run of a function that `jax.jit` turns into a program;
it is paid at every compile (a new shape, a new model) and, for a deep
unrolled model, grows with depth. This measures it alone, without XLA's
compile: inside one `jax.make_jaxpr`, each function is traced `REPEAT` times
on the same tracers and the time per trace is taken; rounds alternate the
implementations so drift hits both alike.

    python benchmarks/trace_overhead.py [--quick]

Rows: the wide MLP's batched forward (what `lm.forward` traces: `jax.vmap`
of `model.apply`) and the gradient of its mean cross-entropy (what
`lm.train_step` traces), against the benchmark's hand-written floor
(`impls.HandWritten`: `lax.dot_general` on the batch, no vmap).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).parent))

import impls  # noqa: E402
from bench import SHAPES  # noqa: E402

import lamina as lm  # noqa: E402
from lamina._src.core.forward import apply_batch  # noqa: E402

xent = optax.softmax_cross_entropy_with_integer_labels


def per_trace_seconds(fn, args, repeat):
    """Seconds per trace of `fn(*args)`, traced `repeat` times inside one jaxpr."""
    took = []

    def many(*tracers):
        start = time.perf_counter()
        for _ in range(repeat):
            fn(*tracers)
        took.append((time.perf_counter() - start) / repeat)
        return 0

    jax.make_jaxpr(many)(*args)
    return took[0]


def workloads(sizes, batch):
    weights = impls.make_weights(sizes)
    floor = impls.HandWritten(weights)
    model = lm.mlp(sizes[1:])
    params = tuple({"W": jnp.asarray(W), "b": jnp.asarray(b)} for W, b in weights)
    xs = jnp.ones((batch, sizes[0]))
    ys = jnp.zeros(batch, jnp.int32)

    def floor_loss(p, xs, ys):
        return jnp.mean(xent(floor.batched_apply(p, xs), ys))

    def lamina_loss(p, xs, ys):
        return jnp.mean(xent(apply_batch(model, p, xs), ys))

    return {
        "forward": (
            (floor.batched_apply, (floor.params, xs)),
            (lambda p, xs: apply_batch(model, p, xs), (params, xs)),
        ),
        "loss gradient": (
            (jax.grad(floor_loss), (floor.params, xs, ys)),
            (jax.grad(lamina_loss), (params, xs, ys)),
        ),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: a few seconds")
    parser.add_argument("--shape", default="wide", choices=sorted(SHAPES))
    args = parser.parse_args(argv)
    rounds, repeat = (3, 5) if args.quick else (31, 50)
    print(f"jax {jax.__version__}, {args.shape} MLP {SHAPES[args.shape]}, batch 64; "
          f"{rounds} rounds of {repeat} traces each\n")
    print("| trace of | hand-written ms | lamina ms | ratio median [min-max] |")
    print("|---|---:|---:|---|")
    results = {}
    for name, ((floor_fn, floor_args), (lamina_fn, lamina_args)) in workloads(
            SHAPES[args.shape], 64).items():
        floor_t, lamina_t, ratios = [], [], []
        for _ in range(rounds):
            f = per_trace_seconds(floor_fn, floor_args, repeat)
            m = per_trace_seconds(lamina_fn, lamina_args, repeat)
            floor_t.append(f)
            lamina_t.append(m)
            ratios.append(m / f)
        med = statistics.median
        print(f"| {name} | {1e3 * med(floor_t):.3f} | {1e3 * med(lamina_t):.3f} | "
              f"{med(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}] |")
        results[name] = med(ratios)
    return results


if __name__ == "__main__":
    main()
