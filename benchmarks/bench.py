"""lamina against hand-written JAX and other libraries, side by side.

Every implementation is built from the same weights (the (out, in) layouts
from the very same device arrays, see impls.py), gets the same input arrays,
and is checked against a float64 NumPy forward before anything is timed.

Timing is paired, because this is a shared machine whose speed drifts by
+-10% over seconds. A block times one implementation's calls (their mean,
after a warm call). Each round visits the implementations in a new random
order and times every one of them in a pair with a block of the
hand-written JAX floor, right before or right after it (a coin decides);
both blocks of a pair make the same number of calls, enough for the slower
one to last about `--block-seconds`. An implementation's ratio to the floor
is the median, over rounds, of its block divided by its pair's floor block:
the two ran back to back, so drift cancels.

One pair's ratio still scatters by up to +-7% here (one standard
deviation; a wide per-example gradient maps 537 MB of fresh pages per
call), so 15 rounds pin the median down only to about +-4% (95%
confidence): too loose for a promise of 1.03. lamina, whose ratio is that
promise, therefore gets more pairs after the rounds, until the 95%
confidence interval of its median ratio is within `--precision` either side
or it has `--max-factor` times the rounds. The other libraries stay at the
rounds: their ratios are far from 1.

The table shows each implementation's median time [min-max] over its
blocks, its paired ratio with that interval, and its number of blocks; the
JSON also keeps the ratio's quartiles and range, and the plain ratio of the
two medians.

    python benchmarks/bench.py                 # full run, about 22 minutes
    python benchmarks/bench.py --quick         # under a minute
    python benchmarks/bench.py --json out.json --impls jax,lamina,torch
    python benchmarks/bench.py --show benchmarks/results-2026-11-26.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import impls  # noqa: E402

SHAPES = {"small": [784, 256, 256, 10], "wide": [1024, 2048, 2048, 1024]}
FLOOR = "jax"


def time_call(fn, number):
    """Mean seconds per call of `fn` over `number` calls, after they all finished."""
    impls.block(fn())  # warm: compile and caches
    start = time.perf_counter()
    for _ in range(number):
        out = fn()
    impls.block(out)
    return (time.perf_counter() - start) / number


def calls_per_block(fn, block_seconds):
    """How many calls of `fn` fill a block of about `block_seconds` (at least one)."""
    per_call = time_call(fn, 3)  # its warm call compiles
    return max(1, round(block_seconds / per_call))


def paired_rounds(measure, keys, rounds, rng, refine=(), precision=0.0, max_rounds=0):
    """Times every key in a pair with the floor, in `rounds` shuffled rounds.

    `measure(key, partner)` returns seconds; `partner` is the other key of
    the pair, so both blocks of a pair can be made alike. Then each key in
    `refine` gets more pairs, up to `max_rounds` in all, until the 95%
    confidence interval of its median ratio is at most `precision` either
    side. Gives {key: [seconds per block]} and {key: [block / its pair's
    floor block]}; the floor's list holds every floor block it ran.
    """
    others = [k for k in keys if k != FLOOR]
    samples = {k: [] for k in keys}
    ratios = {k: [] for k in others}

    def pair(k):
        order = [FLOOR, k] if rng.random() < 0.5 else [k, FLOOR]
        took = {j: measure(j, k if j == FLOOR else FLOOR) for j in order}
        samples[FLOOR].append(took[FLOOR])
        samples[k].append(took[k])
        ratios[k].append(took[k] / took[FLOOR])

    for _ in range(rounds):
        for k in rng.permutation(others):
            pair(k)
    for k in refine:
        while len(ratios[k]) < max_rounds and not _precise(ratios[k], precision):
            pair(k)
    if not others:  # the floor alone still gets its rounds
        samples[FLOOR] = [measure(FLOOR, FLOOR) for _ in range(rounds)]
    return samples, ratios


def median_ci(values):
    """A distribution-free 95% confidence interval of the median.

    The j-th smallest and j-th largest values, with j the largest for which
    Binomial(n, 1/2) <= j - 1 has probability at most 2.5% (at least 95%
    coverage); under six values no such j exists and the range is returned.
    """
    v = sorted(values)
    n = len(v)
    j, tail = 0, 0.0  # tail: P(Binomial(n, 1/2) <= j)
    while True:
        tail += math.comb(n, j) / 2**n
        if tail > 0.025:
            break
        j += 1
    j = max(j, 1)
    return v[j - 1], v[n - j]


def _precise(ratios, precision):
    if len(ratios) < 2:
        return False
    low, high = median_ci(ratios)
    return (high - low) / 2 <= precision


def bare_matmul_seconds(sizes, batch, block_seconds):
    """The same FLOPs as the forward's matmuls, each a bare jitted dot_general."""
    dot = jax.jit(lambda x, W: lax.dot_general(x, W, (((1,), (1,)), ((), ()))))
    total = 0.0
    for i, o in zip(sizes[:-1], sizes[1:]):
        x, W = jnp.ones((batch, i)), jnp.ones((o, i))
        fn = lambda: dot(x, W)  # noqa: E731
        total += time_call(fn, calls_per_block(fn, block_seconds))
    return total


def workloads(sizes, quick):
    """name -> (batch, builder(impl, data) -> zero-arg callable)."""
    big = 512 if quick else 4096
    peg_batch = 256 if sizes[1] <= 256 else 16  # wide per-example grads: 16 x 8.4M params
    return {
        "forward b=1": (1, lambda impl, d: (lambda: impl.forward(d))),
        f"forward b={big}": (big, lambda impl, d: (lambda: impl.forward(d))),
        "adam step b=256": (256, lambda impl, d: impl.train_step),
        f"per-example grads b={peg_batch}": (peg_batch, lambda impl, d: impl.per_example_grads),
    }


def check_against_numpy(impl, weights, xs):
    got = np.asarray(impl.forward(impl.to_device(xs)), np.float64)
    want = impls.numpy_forward(weights, xs)
    err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
    if not err < 1e-4:
        raise AssertionError(f"{impl.name}: forward differs from NumPy by {err:.2e}")


def cold_compile(key, shape, module="bench"):
    """Seconds from a fresh process's first jitted call to its result (jax impls).

    `module` (a file next to this one) gives `compile_probe(key, shape)`:
    the implementation and a batch-1 input for it.
    """
    code = (
        "import sys, time; sys.path.insert(0, %r); import impls, %s\n"
        "impl, xs = %s.compile_probe(%r, %r)\n"
        "t = time.perf_counter(); impls.block(impl.forward(xs)); print(time.perf_counter() - t)"
    ) % (os.path.dirname(os.path.abspath(__file__)), module, module, str(key), str(shape))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def compile_probe(key, shape):
    w = impls.make_weights(SHAPES[shape])
    impl = impls.ALL[key][0](w)
    return impl, impl.to_device(np.ones((1, SHAPES[shape][0]), np.float32))


def measure_workload(built, make, xs, ys, rounds, block_seconds, rng, refine=(), precision=0.0,
                     max_rounds=0):
    """Paired rounds of one workload over the `built` implementations.

    Each implementation is `prepare`d with the batch `(xs, ys)`; `make(impl,
    data)` gives the zero-arg call to time. Returns `(samples, extra)` as
    `run` stores them: extra holds the ratios and the calls per block.
    """
    calls, numbers = {}, {}
    for k, impl in built.items():
        impl.prepare(xs, ys)
        calls[k] = make(impl, impl.to_device(xs))
        numbers[k] = calls_per_block(calls[k], block_seconds)
    # Both blocks of a pair make the same number of calls: the count
    # changes how many large outputs are alive at once, and so what
    # the allocator has to map, which would bias the ratio.
    samples, ratios = paired_rounds(
        lambda k, partner: time_call(calls[k], max(numbers[k], numbers[partner])),
        list(built), rounds, rng, refine, precision, max_rounds)
    return samples, {"ratios": ratios, "calls_per_block": numbers}


def run(keys, shapes, rounds, block_seconds, quick, compile_rounds, precision=0.0, max_factor=1):
    results = {}
    rng = np.random.default_rng(0)
    # lamina's ratio to the floor is the figure this library promises, so
    # it alone gets the extra pairs that pin its median down.
    lamina_only = [k for k in keys if k == "lamina"]
    for shape in shapes:
        sizes = SHAPES[shape]
        weights = impls.make_weights(sizes)
        shared = impls.on_device(weights)
        built = {k: impls.ALL[k][0](shared) for k in keys}
        probe = rng.normal(size=(8, sizes[0])).astype(np.float32)
        for impl in built.values():
            check_against_numpy(impl, weights, probe)
        for metric, (batch, make) in workloads(sizes, quick).items():
            xs = jnp.asarray(rng.normal(size=(batch, sizes[0])).astype(np.float32))
            ys = jnp.asarray(rng.integers(0, sizes[-1], size=batch))
            samples, extra = measure_workload(built, make, xs, ys, rounds, block_seconds, rng,
                                              lamina_only, precision, rounds * max_factor)
            if metric.startswith("forward") and batch > 1:
                extra["bare_matmul_s"] = bare_matmul_seconds(sizes, batch, block_seconds)
                extra["flops"] = 2 * batch * sum(i * o for i, o in zip(sizes[:-1], sizes[1:]))
            results[(shape, metric)] = (samples, extra)
            print(f"  {shape} {metric}: done", file=sys.stderr)
        if compile_rounds:
            jax_keys = [k for k in keys if impls.ALL[k][1] != "torch"]
            samples, ratios = paired_rounds(
                lambda k, partner: cold_compile(k, shape), jax_keys, compile_rounds, rng,
                lamina_only, precision, compile_rounds * max_factor)
            results[(shape, "cold compile b=1")] = (samples, {"ratios": ratios})
    return results


def summarize(results, names=None, labels=None):
    """Table rows; `names` maps keys to display names, `labels` shapes to labels."""
    names = names or {k: impl.name for k, (impl, _) in impls.ALL.items()}
    labels = labels or {k: "-".join(map(str, sizes)) for k, sizes in SHAPES.items()}
    rows = []
    for (shape, metric), (samples, extra) in results.items():
        floor = statistics.median(samples[FLOOR])
        for k, times in samples.items():
            med = statistics.median(times)
            paired = extra["ratios"].get(k, [1.0])
            ci_low, ci_high = median_ci(paired)
            row = {
                "shape": labels[shape],
                "metric": metric,
                "impl": names[k],
                "median_ms": med * 1e3,
                "min_ms": min(times) * 1e3,
                "max_ms": max(times) * 1e3,
                "ratio_to_jax": statistics.median(paired),
                "ratio_q1": float(np.percentile(paired, 25)),
                "ratio_q3": float(np.percentile(paired, 75)),
                "ratio_min": min(paired),
                "ratio_max": max(paired),
                "ratio_ci_low": ci_low,
                "ratio_ci_high": ci_high,
                "ratio_of_medians": med / floor,
                "blocks": len(times),
            }
            if "calls_per_block" in extra:
                row["calls_per_block"] = extra["calls_per_block"][k]
            if "flops" in extra:
                row["gflops"] = extra["flops"] / med / 1e9
                row["fraction_of_bare_matmul"] = extra["bare_matmul_s"] / med
            rows.append(row)
    return rows


def format_table(rows):
    lines = [
        "| shape | workload | implementation | median ms [min-max] | / jax, paired median [95% CI] | blocks | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        note = ""
        if "gflops" in r:
            note = f"{r['gflops']:.1f} GFLOP/s, {r['fraction_of_bare_matmul']:.2f} of bare matmul"
        ratio = f"{r['ratio_to_jax']:.3f}"
        if "ratio_ci_low" in r and not r["impl"].startswith("jax"):
            ratio += f" [{r['ratio_ci_low']:.3f}-{r['ratio_ci_high']:.3f}]"
        lines.append(
            f"| {r['shape']} | {r['metric']} | {r['impl']} | "
            f"{r['median_ms']:.3f} [{r['min_ms']:.3f}-{r['max_ms']:.3f}] | {ratio} | {r['blocks']} | {note} |"
        )
    return "\n".join(lines)


def format_compact(rows):
    """One row per workload, one column per library: median, and (ratio to jax)."""
    impls_seen = list(dict.fromkeys(r["impl"] for r in rows))
    keys = list(dict.fromkeys((r["shape"], r["metric"]) for r in rows))
    lines = [
        "| shape | workload | " + " | ".join(impls_seen) + " |",
        "|---|---|" + "---|" * len(impls_seen),
    ]
    for key in keys:
        cells = []
        for name in impls_seen:
            found = [r for r in rows if (r["shape"], r["metric"]) == key and r["impl"] == name]
            if not found:
                cells.append("-")
                continue
            ms = found[0]["median_ms"]
            text = f"{ms * 1e3:.0f} us" if ms < 1 else f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"
            if not name.startswith("jax"):
                text += f" ({found[0]['ratio_to_jax']:.2f})"
            cells.append(f"**{text}**" if name == "lamina" else text)
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def versions():
    import importlib.metadata as md

    found = {}
    for dist in ("jax", "jaxlib", "optax", "flax", "equinox", "dm-haiku", "torch", "numpy"):
        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return found


def parse_settings(argv, description, registry, available, shapes, quick_shapes):
    """The command line, shared with models.py: `(settings, None)`, or `(None, rows)` for --show.

    `registry` is the implementations' dict (key -> (class, module)),
    `available` the installed keys, `shapes` the shape names (all run by
    default), `quick_shapes` those --quick runs.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="few rounds, short blocks: a smoke run")
    parser.add_argument("--impls", default=",".join(available),
                        help=f"comma-separated, from {','.join(registry)} (default: all installed)")
    parser.add_argument("--shapes", default=None, help=f"comma-separated from {','.join(shapes)}")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--compile-rounds", type=int, default=None)
    parser.add_argument("--precision", type=float, default=None,
                        help="lamina gets more pairs until the 95%% CI of its median ratio is within "
                             "this either side (default 0.015; quick: no extra pairs)")
    parser.add_argument("--max-factor", type=int, default=4,
                        help="those extra pairs stop at this many times --rounds (--compile-rounds) in all")
    parser.add_argument("--block-seconds", type=float, default=None,
                        help="how long one timed block of calls lasts (default 0.25, quick 0.05)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--show", default=None, metavar="JSON", help="print the tables of a saved run and exit")
    args = parser.parse_args(argv)
    if args.show:
        with open(args.show) as f:
            rows = json.load(f)["rows"]
        print(format_table(rows) + "\n\n" + format_compact(rows))
        return None, rows
    keys = [k for k in args.impls.split(",") if k]
    unknown = set(keys) - set(registry)
    if unknown:
        parser.error(f"unknown implementations {sorted(unknown)}; choose from {list(registry)}")
    if FLOOR not in keys:
        keys.insert(0, FLOOR)
    chosen = (args.shapes or ",".join(quick_shapes if args.quick else shapes)).split(",")
    if set(chosen) - set(shapes):
        parser.error(f"unknown shapes {sorted(set(chosen) - set(shapes))}; choose from {list(shapes)}")
    precision = args.precision if args.precision is not None else (0.0 if args.quick else 0.015)
    return argparse.Namespace(
        keys=keys,
        shapes=chosen,
        rounds=args.rounds or (3 if args.quick else 15),
        block_seconds=args.block_seconds or (0.05 if args.quick else 0.25),
        compile_rounds=args.compile_rounds if args.compile_rounds is not None else (1 if args.quick else 5),
        precision=precision,
        max_factor=args.max_factor if precision else 1,
        quick=args.quick,
        json=args.json,
    ), None


def main(argv=None):
    s, shown = parse_settings(argv, __doc__.splitlines()[0], impls.ALL, impls.available(),
                              list(SHAPES), ["small"])
    if s is None:
        return shown
    results = run(s.keys, s.shapes, s.rounds, s.block_seconds, s.quick, s.compile_rounds,
                  s.precision, s.max_factor)
    meta = run_meta(s.rounds, s.block_seconds, s.precision, s.max_factor, s.compile_rounds, s.quick)
    return report(summarize(results), meta, s.json)


def run_meta(rounds, block_seconds, precision, max_factor, compile_rounds, quick):
    """The settings and machine a run's JSON records."""
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "backend": jax.default_backend(),
        "versions": versions(),
        "rounds": rounds,
        "block_seconds": block_seconds,
        "precision": precision,
        "max_rounds": rounds * max_factor,
        "max_compile_rounds": compile_rounds * max_factor,
        "quick": quick,
    }


def report(rows, meta, json_path):
    """Prints the tables and writes the JSON (when `json_path`); gives the rows."""
    print(f"\n{meta['date']}, {meta['machine']}, backend {meta['backend']}, "
          f"{meta['rounds']} paired rounds of {meta['block_seconds']} s blocks; "
          + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    print(format_table(rows) + "\n\n" + format_compact(rows))
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
