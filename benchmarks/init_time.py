"""How long `model.init` takes, cold, for a model whose layers all have distinct widths.

Eager `jax.random` compiles one program per shape it draws, so a model of 60
`Dense` layers of distinct widths used to compile about 120 times to
initialise (45-52 s on this 2-core machine). lamina now draws every array
from blocks of one fixed shape: about one compile per process. Each
measurement runs in a fresh Python process (compiles are cached per
process), lamina's init beside plain JAX drawing the same shapes with
`jax.random.uniform` one by one (what init cost before):

    python benchmarks/init_time.py            # 60 layers, 3 runs each
    python benchmarks/init_time.py --layers 20 --runs 1
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

LAMINA = """
import time, jax, lamina as lm
model = lm.serial(*(lm.Dense(16 + 3 * i, act="relu") for i in range({n})))
start = time.perf_counter()
jax.block_until_ready(model.init(jax.random.key(0), (8,))[1])
print(time.perf_counter() - start)
"""

PLAIN_JAX = """
import time, jax
shapes = []
fan_in = 8
for i in range({n}):
    shapes += [(16 + 3 * i, fan_in), (16 + 3 * i,)]
    fan_in = 16 + 3 * i
start = time.perf_counter()
keys = jax.random.split(jax.random.key(0), len(shapes))
jax.block_until_ready([jax.random.uniform(k, s) for k, s in zip(keys, shapes)])
print(time.perf_counter() - start)
"""


def cold_seconds(code: str) -> float:
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(run.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=60)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    results = {}
    for name, code in (("lamina init", LAMINA), ("plain jax.random, one draw per shape", PLAIN_JAX)):
        times = [cold_seconds(code.format(n=args.layers)) for _ in range(args.runs)]
        results[name] = times
        print(f"| {args.layers} Dense, distinct widths | {name} | median {statistics.median(times):.2f} s "
              f"[{min(times):.2f}-{max(times):.2f}] over {len(times)} cold runs |")
    return results


if __name__ == "__main__":
    main()
