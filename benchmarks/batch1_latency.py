"""What a batch-1 forward costs on XLA:CPU, and what makes it cheaper.

At batch 1 the arithmetic is tiny; the time goes to reading the weights and
to dispatch. Each variant runs in its own process (XLA flags and JAX's
dispatch mode are process-wide), interleaved over rounds, for the
784-256-256-10 MLP:

- lamina `lm.forward` on a (1, 784) batch, and `jax.jit(model.apply)` on one
  (784,) example (gemv-shaped dots);
- the same with `jax_cpu_enable_async_dispatch=False` (synchronous dispatch);
- the same with `XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`;
- the weight-reading bound: NumPy's gemv over the same weights; PyTorch eager.
Also the Adam train step at batch 256 under each setting, to see whether a
setting that helps latency costs training throughput.

    python benchmarks/batch1_latency.py [--rounds 5]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np, optax
if SYNC:
    jax.config.update("jax_cpu_enable_async_dispatch", False)
import lamina as lm

model = lm.mlp([256, 256, 10])
_, params = model.init(jax.random.key(0), (784,))
fwd, one = lm.forward(model), jax.jit(model.apply)
x1, x0 = jnp.ones((1, 784)), jnp.ones(784)
Ws = [(np.asarray(p["W"]), np.asarray(p["b"])) for p in params]
xn = np.ones(784, np.float32)
opt = optax.adam(1e-3)
step = lm.train_step(model, optax.softmax_cross_entropy_with_integer_labels, opt)
state = [jax.tree.map(jnp.copy, params)]
state.append(opt.init(state[0]))
xs, ys = jnp.ones((256, 784)), jnp.zeros(256, jnp.int32)

def np_forward():
    h = xn
    for i, (W, b) in enumerate(Ws):
        h = W @ h + b
        if i < 2:
            h = np.maximum(h, 0)
    return h

def train():
    p, s, m = step(state[0], state[1], (xs, ys))
    state[:] = [p, s]
    return m["loss"]

cases = {"forward (1, 784)": lambda: fwd(params, x1), "apply (784,)": lambda: one(params, x0),
         "numpy gemv": np_forward, "adam step b=256": train}
try:
    import torch
    tm = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                             torch.nn.ReLU(), torch.nn.Linear(256, 10))
    tx = torch.ones(1, 784)
    def torch_forward():
        with torch.inference_mode():
            return tm(tx)
    cases["pytorch eager (1, 784)"] = torch_forward
except ImportError:
    pass
out = {}
for name, fn in cases.items():
    n = 20 if "step" in name else 500
    jax.block_until_ready(fn()); jax.block_until_ready(fn())
    t = time.perf_counter()
    for _ in range(n):
        r = fn()
    jax.block_until_ready(r)
    out[name] = (time.perf_counter() - t) / n
print(json.dumps(out))
"""

VARIANTS = {
    "default": ({}, False),
    "sync dispatch": ({}, True),
    "eigen single-thread": ({"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}, False),
}


def measure(env_extra, sync):
    env = dict(os.environ, **env_extra)
    code = CHILD.replace("SYNC", str(sync))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    samples = {}
    for _ in range(args.rounds):
        for variant, (env, sync) in VARIANTS.items():
            for case, seconds in measure(env, sync).items():
                samples.setdefault((variant, case), []).append(seconds * 1e6)
    print("| setting | workload | median us [min-max] |\n|---|---|---|")
    for (variant, case), values in samples.items():
        print(f"| {variant} | {case} | {statistics.median(values):.1f} "
              f"[{min(values):.1f}-{max(values):.1f}] |")
    return samples


if __name__ == "__main__":
    main()
