"""Deep models: cold compile and step time of one block repeated against depth.

The block is a pre-norm residual MLP, `x + Dense(256, gelu-free)(Dense(1024,
gelu)(LayerNorm(x)))`, repeated `n` times on inputs of shape (256,), batch 64;
the loss is the mean squared error to a fixed random target, the optimizer
Adam(1e-3). Implementations:

  serial      lm.serial(*[block] * n) under lm.train_step (unrolled: n traces)
  stack       lm.stack(block, n) under lm.train_step (lax.scan: one trace)
  stack+remat lm.stack(lm.remat(block), n): activations recomputed
  scan        the floor: lax.scan over the stacked params by hand, the block
              in plain jax.numpy on the batch, value_and_grad + optax.adam
  flax        Flax Linen nn.scan over a block module
  haiku       Haiku hk.layer_stack(n)

All read one set of stacked NumPy weights (the (in, out) libraries a
transposed copy), and before anything is timed their forwards are checked
against the floor's and a float64 NumPy forward, and one Adam step's loss
and new params against the floor's. Every train step donates params and
optimizer state, as lm.train_step does.

Cold compile: `jax.jit(step).lower(...).compile()` of a freshly built step
after `jax.clear_caches()` (trace + lower + compile), a few rounds, median
[min-max]. The unrolled serial step at the largest depth is compiled only if
its extrapolated time stays under `--serial-limit` seconds, in a subprocess
that is killed at that limit.

Step time: blocks of steps (same number of steps on both sides of a pair),
each paired with a block of the floor right before or after it (bench.py's
paired_rounds): a ratio is the median over pairs of block / its floor block,
with a distribution-free 95% interval.

Peak memory: XLA's compiled memory analysis of the train step, arguments +
temporaries + outputs - aliased, for stack, stack(remat) and
stack(remat(dots_saveable)).

    python benchmarks/depth.py                  # full run, about 15 minutes
    python benchmarks/depth.py --quick          # depths 2 and 4, tiny widths, seconds
    python benchmarks/depth.py --show benchmarks/results-2026-11-29-depth.json
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench import FLOOR, median_ci, paired_rounds, versions  # noqa: E402
from memory import MB  # noqa: E402

import lamina as lm  # noqa: E402

FLOOR_KEY = FLOOR  # bench.paired_rounds pairs every key with "jax": the hand-written scan
EPS = 1e-5
LR = 1e-3
IMPLS = ["serial", "stack", "stack+remat", FLOOR_KEY, "flax", "haiku"]


def available():
    """The IMPLS whose library imports here (Flax and Haiku come with the bench extra)."""
    return [k for k in IMPLS if k not in ("flax", "haiku") or importlib.util.find_spec(k)]

LABELS = {
    "serial": "lm.serial (unrolled)",
    "stack": "lm.stack",
    "stack+remat": "lm.stack(lm.remat)",
    "stack+remat(dots)": "lm.stack(lm.remat(dots_saveable))",
    FLOOR_KEY: "lax.scan by hand",
    "flax": "flax.linen nn.scan",
    "haiku": "haiku layer_stack",
}


# ----------------------------------------------------------------------------
# weights, data, reference


def make_weights(n, width, hidden, seed=0):
    """Stacked float32 weights of n blocks, (out, in) layout: the one source for all."""
    rng = np.random.default_rng(seed)

    def u(shape, fan_in, gain=1.0):
        return (rng.uniform(-1, 1, shape) * gain / np.sqrt(fan_in)).astype(np.float32)

    return {
        "scale": (1 + 0.1 * rng.standard_normal((n, width))).astype(np.float32),
        "offset": (0.1 * rng.standard_normal((n, width))).astype(np.float32),
        "W1": u((n, hidden, width), width),
        "b1": u((n, hidden), width),
        # smaller residual branches keep the stream's scale tame at depth 256
        "W2": u((n, width, hidden), hidden, 1 / np.sqrt(n)),
        "b2": u((n, width), hidden, 1 / np.sqrt(n)),
    }


def numpy_forward(w, xs):
    """The float64 reference, independent of every library timed."""
    h = np.asarray(xs, np.float64)
    w = {k: v.astype(np.float64) for k, v in w.items()}
    for i in range(w["W1"].shape[0]):
        mean = h.mean(-1, keepdims=True)
        y = (h - mean) / np.sqrt(((h - mean) ** 2).mean(-1, keepdims=True) + EPS)
        y = y * w["scale"][i] + w["offset"][i]
        z = y @ w["W1"][i].T + w["b1"][i]
        z = 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))
        h = h + z @ w["W2"][i].T + w["b2"][i]
    return h


def mse(outputs, targets):
    return jnp.mean(jnp.square(outputs - targets))


def per_example_mse(outputs, targets):
    return jnp.mean(jnp.square(outputs - targets), axis=-1)


# ----------------------------------------------------------------------------
# implementations: params from the weights, a fresh step, a forward, and back


class Impl:
    """params(w) -> tree; step() -> a fresh jitted donating step; forward(); weights_of()."""

    def __init__(self, n, width, hidden):
        self.n, self.width, self.hidden = n, width, hidden

    def load(self, w):
        self.params = self.make_params(w)
        self.opt = optax.adam(LR)
        self.opt_state = self.opt.init(self.params)

    def run_steps(self, step, batch, count):
        """`count` steps on the kept state; returns the last loss (not waited for)."""
        for _ in range(count):
            self.params, self.opt_state, metrics = step(self.params, self.opt_state, batch)
        return metrics["loss"]


class LaminaImpl(Impl):
    remat = None  # None: no remat; "all": recompute everything; or a policy name

    def block(self):
        return lm.residual(lm.serial(lm.LayerNorm(), lm.Dense(self.hidden, act="gelu_tanh"),
                                     lm.Dense(self.width)))

    def model(self):
        block = self.block()
        if self.remat is not None:
            block = lm.remat(block, None if self.remat == "all" else self.remat)
        return lm.stack(block, self.n)

    def make_params(self, w):
        one = lambda i: (({"scale": w["scale"][i], "offset": w["offset"][i]},  # noqa: E731
                          {"W": w["W1"][i], "b": w["b1"][i]},
                          {"W": w["W2"][i], "b": w["b2"][i]}),)
        stacked = jax.tree.map(jnp.asarray, one(slice(None)))
        return stacked

    def weights_of(self, params):
        ((ln, d1, d2),) = params
        return {"scale": ln["scale"], "offset": ln["offset"], "W1": d1["W"], "b1": d1["b"],
                "W2": d2["W"], "b2": d2["b"]}

    def step(self):
        # a fresh model and a fresh jitted step every time: nothing cached
        return lm.train_step(self.model(), per_example_mse, self.opt)

    def forward(self):
        return lm.forward(self.model())


class StackImpl(LaminaImpl):
    name = "stack"


class RematImpl(LaminaImpl):
    name, remat = "stack+remat", "all"


class RematDotsImpl(LaminaImpl):
    name, remat = "stack+remat(dots)", "dots_saveable"


class SerialImpl(LaminaImpl):
    name = "serial"

    def model(self):
        return lm.serial(*[self.block()] * self.n)

    def make_params(self, w):
        return lm.stack(self.block(), self.n).unstack(super().make_params(w))

    def weights_of(self, params):
        return super().weights_of(lm.stack(self.block(), self.n).restack(params))


def dense(x, W, b):
    # lamina's Dense: contract W's input axis, no transposed copy
    return lax.dot_general(x, W, (((x.ndim - 1,), (1,)), ((), ()))) + b


def floor_block(h, p):
    mean = jnp.mean(h, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
    y = (h - mean) * lax.rsqrt(var + EPS) * p["scale"] + p["offset"]
    z = jax.nn.gelu(dense(y, p["W1"], p["b1"]))
    return h + dense(z, p["W2"], p["b2"])


def floor_apply(params, xs):
    return lax.scan(lambda h, p: (floor_block(h, p), None), xs, params)[0]


def donating_step(apply, opt):
    """value_and_grad of the batch MSE + an optax update, jitted, donating params and state."""

    def step(params, opt_state, batch):
        xs, ys = batch
        loss, grads = jax.value_and_grad(lambda p: mse(apply(p, xs), ys))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss}

    return jax.jit(step, donate_argnums=(0, 1))


class ScanImpl(Impl):
    name = FLOOR_KEY

    def make_params(self, w):
        return {k: jnp.asarray(v) for k, v in w.items()}

    def weights_of(self, params):
        return params

    def step(self):
        return donating_step(floor_apply, self.opt)

    def forward(self):
        return jax.jit(floor_apply)


class FlaxImpl(Impl):
    name = "flax"

    def _module(self):
        import flax.linen as nn

        width, hidden = self.width, self.hidden

        class Block(nn.Module):
            @nn.compact
            def __call__(self, x, _):
                h = nn.LayerNorm(epsilon=EPS, use_fast_variance=False)(x)
                h = nn.gelu(nn.Dense(hidden)(h))
                return x + nn.Dense(width)(h), None

        class Stack(nn.Module):
            n: int

            @nn.compact
            def __call__(self, x):
                scanned = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                                  length=self.n)
                return scanned(name="blocks")(x, None)[0]

        return Stack(self.n)

    def make_params(self, w):
        t = lambda a: jnp.asarray(np.swapaxes(a, 1, 2))  # noqa: E731  (n, out, in) -> (n, in, out)
        return {"params": {"blocks": {
            "LayerNorm_0": {"scale": jnp.asarray(w["scale"]), "bias": jnp.asarray(w["offset"])},
            "Dense_0": {"kernel": t(w["W1"]), "bias": jnp.asarray(w["b1"])},
            "Dense_1": {"kernel": t(w["W2"]), "bias": jnp.asarray(w["b2"])},
        }}}

    def weights_of(self, params):
        p = params["params"]["blocks"]
        t = lambda a: jnp.swapaxes(a, 1, 2)  # noqa: E731
        return {"scale": p["LayerNorm_0"]["scale"], "offset": p["LayerNorm_0"]["bias"],
                "W1": t(p["Dense_0"]["kernel"]), "b1": p["Dense_0"]["bias"],
                "W2": t(p["Dense_1"]["kernel"]), "b2": p["Dense_1"]["bias"]}

    def step(self):
        return donating_step(self._module().apply, self.opt)

    def forward(self):
        return jax.jit(self._module().apply)


class HaikuImpl(Impl):
    name = "haiku"

    def _transformed(self):
        import haiku as hk

        width, hidden, n = self.width, self.hidden, self.n

        def block(x):
            h = hk.LayerNorm(axis=-1, create_scale=True, create_offset=True, eps=EPS,
                             name="ln")(x)
            h = jax.nn.gelu(hk.Linear(hidden, name="fc1")(h))
            return x + hk.Linear(width, name="fc2")(h)

        def model(x):
            return hk.layer_stack(n, name="blocks")(block)(x)

        return hk.without_apply_rng(hk.transform(model))

    def _names(self):
        if not hasattr(self, "_keys"):
            shapes = jax.eval_shape(self._transformed().init, jax.random.key(0),
                                    jnp.zeros((1, self.width)))
            self._keys = {m.rsplit("/", 1)[-1].lstrip("~"): m for m in shapes}
        return self._keys

    def make_params(self, w):
        k = self._names()
        t = lambda a: jnp.asarray(np.swapaxes(a, 1, 2))  # noqa: E731
        return {k["ln"]: {"scale": jnp.asarray(w["scale"]), "offset": jnp.asarray(w["offset"])},
                k["fc1"]: {"w": t(w["W1"]), "b": jnp.asarray(w["b1"])},
                k["fc2"]: {"w": t(w["W2"]), "b": jnp.asarray(w["b2"])}}

    def weights_of(self, params):
        k = self._names()
        t = lambda a: jnp.swapaxes(a, 1, 2)  # noqa: E731
        return {"scale": params[k["ln"]]["scale"], "offset": params[k["ln"]]["offset"],
                "W1": t(params[k["fc1"]]["w"]), "b1": params[k["fc1"]]["b"],
                "W2": t(params[k["fc2"]]["w"]), "b2": params[k["fc2"]]["b"]}

    def step(self):
        return donating_step(self._transformed().apply, self.opt)

    def forward(self):
        return jax.jit(self._transformed().apply)


CLASSES = {c.name: c for c in (SerialImpl, StackImpl, RematImpl, RematDotsImpl, ScanImpl,
                                FlaxImpl, HaikuImpl)}


# ----------------------------------------------------------------------------
# checks


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(1.0, np.abs(want).max()))


def check_agreement(built, steps, w, batch, tol=1e-4):
    """Forwards against NumPy and the floor; two Adam steps' losses against the floor's.

    Gives {impl: {"forward": err, "loss": err, "loss after a step": err,
    "update": err}}, all relative (the update's to the learning rate); raises
    when a forward or loss is over `tol`. The update is kept, not checked:
    Adam's first update is about lr * sign(grad), so float rounding in a
    gradient near zero moves single entries by a visible fraction of lr.
    """
    xs, _ = batch
    want = numpy_forward(w, np.asarray(xs))
    ref = built[FLOOR_KEY]
    ref_out = ref.forward()(ref.params, xs)
    errors, after = {}, {}
    for key, impl in built.items():
        out = impl.forward()(impl.params, xs)
        errors[key] = {"forward": max(rel_err(out, want), rel_err(out, ref_out))}
        # two steps on copies: the kept state stays at the shared starting point
        params = jax.tree.map(jnp.copy, impl.params)
        state = jax.tree.map(jnp.copy, impl.opt_state)
        params, state, first = steps[key](params, state, batch)
        update = impl.weights_of(params)
        update = {k: np.asarray(v) for k, v in update.items()}
        params, state, second = steps[key](params, state, batch)
        after[key] = (float(first["loss"]), float(second["loss"]), update)
    loss0, loss1, w0 = after[FLOOR_KEY]
    for key, (first, second, weights) in after.items():
        errors[key]["loss"] = abs(first - loss0) / max(1.0, abs(loss0))
        errors[key]["loss after a step"] = abs(second - loss1) / max(1.0, abs(loss1))
        errors[key]["update"] = max(float(np.abs(weights[k] - w0[k]).max()) for k in w0) / LR
    bad = {k: e for k, e in errors.items()
           if max(e["forward"], e["loss"], e["loss after a step"]) > tol}
    if bad:
        raise AssertionError(f"implementations disagree: {bad} (floor's losses {loss0}, {loss1})")
    return errors


# ----------------------------------------------------------------------------
# measurements


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def compile_seconds(impl, batch):
    step = impl.step()  # built fresh
    jax.clear_caches()
    gc.collect()
    start = time.perf_counter()
    step.lower(impl.params, impl.opt_state, batch).compile()
    return time.perf_counter() - start


_SUBPROCESS = """
import sys, time, jax, jax.numpy as jnp
sys.path.insert(0, %(here)r)
import depth
impl = depth.CLASSES[%(key)r](%(n)d, %(width)d, %(hidden)d)
impl.load(depth.make_weights(%(n)d, %(width)d, %(hidden)d))
xs = jnp.ones((%(batch)d, %(width)d)); ys = jnp.ones((%(batch)d, %(width)d))
print(depth.compile_seconds(impl, (xs, ys)))
"""


def compile_in_subprocess(key, n, width, hidden, batch, limit):
    """Seconds of one cold compile in a fresh process, or None when it passes `limit`."""
    code = _SUBPROCESS % dict(here=HERE, key=key, n=n, width=width, hidden=hidden, batch=batch)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=limit, check=True)
    except subprocess.TimeoutExpired:
        return None
    return float(out.stdout.strip().splitlines()[-1])


def peak_bytes(compiled):
    m = compiled.memory_analysis()
    return {"argument": m.argument_size_in_bytes, "temp": m.temp_size_in_bytes,
            "output": m.output_size_in_bytes, "alias": m.alias_size_in_bytes,
            "peak": m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
            - m.alias_size_in_bytes}


def memory_rows(n, width, hidden, batch):
    """Compiled peak memory of the stack's train step, with and without remat, at depth n."""
    rows = {}
    spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)  # noqa: E731
    xs = jax.ShapeDtypeStruct((batch, width), jnp.float32)
    for key in ("stack", "stack+remat", "stack+remat(dots)"):
        impl = CLASSES[key](n, width, hidden)
        impl.opt = optax.adam(LR)
        params = jax.eval_shape(lambda: impl.model().init(jax.random.key(0), (width,))[1])
        state = jax.eval_shape(impl.opt.init, params)
        compiled = impl.step().lower(jax.tree.map(spec, params), jax.tree.map(spec, state),
                                     (xs, xs)).compile()
        rows[key] = peak_bytes(compiled)
    return rows


def step_rows(built, steps, batch, rounds, block_seconds, rng, precision, max_rounds):
    """Paired step times: {impl: seconds per step} and {impl: ratios to the floor}."""
    for k, impl in built.items():  # warm: compile and first-run costs
        jax.block_until_ready(impl.run_steps(steps[k], batch, 1))
    start = time.perf_counter()
    jax.block_until_ready(built[FLOOR_KEY].run_steps(steps[FLOOR_KEY], batch, 2))
    per_step = (time.perf_counter() - start) / 2
    count = max(1, round(block_seconds / per_step))

    def measure(key, partner):
        begin = time.perf_counter()
        jax.block_until_ready(built[key].run_steps(steps[key], batch, count))
        return (time.perf_counter() - begin) / count

    samples, ratios = paired_rounds(measure, list(built), rounds, rng, refine=["stack"],
                                    precision=precision, max_rounds=max_rounds)
    return samples, ratios, count


# ----------------------------------------------------------------------------
# the run


def run(args):
    rng = np.random.default_rng(0)
    width, hidden, batch_size = args.width, args.hidden, args.batch
    results = {"versions": versions(), "width": width, "hidden": hidden, "batch": batch_size,
               "depths": args.depths, "compile": {}, "step": {}, "ratios": {}, "agreement": {},
               "memory": {}, "not_measured": {}, "block_steps": {}}
    serial_times = {}
    for n in args.depths:
        print(f"depth {n}", file=sys.stderr, flush=True)
        w = make_weights(n, width, hidden)
        xs = jnp.asarray(rng.standard_normal((batch_size, width)).astype(np.float32))
        ys = jnp.asarray(rng.standard_normal((batch_size, width)).astype(np.float32))
        batch = (xs, ys)
        keys = list(args.impls)
        serial_here = "serial" in keys and n <= args.serial_max_inprocess
        if "serial" in keys and not serial_here:
            keys.remove("serial")
        built = {}
        for key in keys:
            built[key] = CLASSES[key](n, width, hidden)
            built[key].load(w)
        steps = {k: impl.step() for k, impl in built.items()}
        results["agreement"][str(n)] = check_agreement(built, steps, w, batch)
        rounds = args.rounds if n < max(args.depths) or len(args.depths) < 2 else args.rounds_deep
        samples, ratios, count = step_rows(built, steps, batch, rounds, args.block_seconds, rng,
                                           args.precision, 2 * rounds)
        del steps
        results["block_steps"][str(n)] = count
        results["step"][str(n)] = {k: summary(v) for k, v in samples.items()}
        results["ratios"][str(n)] = {
            k: {"median": statistics.median(r), "ci": list(median_ci(r)), "pairs": len(r)}
            for k, r in ratios.items()
        }

        # cold compiles last: they clear the caches the timed steps ran from
        comp = {k: [] for k in built}
        for _ in range(args.compile_rounds):
            for k in rng.permutation(list(built)):
                comp[k].append(compile_seconds(built[k], batch))
        results["compile"][str(n)] = {k: summary(v) for k, v in comp.items()}
        if "serial" in comp:
            serial_times[n] = statistics.median(comp["serial"])
        elif "serial" in args.impls:
            results["compile"][str(n)]["serial"] = serial_large(n, serial_times, args, results)
        if "stack" in comp:
            # rounds visit the impls in shuffled order; a round's two compiles ran close together
            comp_ratio = [s / f for s, f in zip(comp["stack"], comp[FLOOR_KEY])]
            results["ratios"][str(n)]["compile stack"] = {
                "median": statistics.median(comp_ratio), "ci": [min(comp_ratio), max(comp_ratio)],
                "pairs": len(comp_ratio)}
        del built
        gc.collect()
        print_depth(results, n)
        if args.json:  # what is measured so far, should a later depth fail
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)

    for n in args.memory_depths:
        print(f"memory at depth {n}", file=sys.stderr, flush=True)
        results["memory"][str(n)] = memory_rows(n, width, hidden, batch_size)
    if args.remat_dots_depths:
        results["remat_dots_step"] = remat_dots_steps(args, rng)
    return results


def serial_large(n, serial_times, args, results):
    """The unrolled step's compile at a depth too large to repeat: once, if it looks affordable."""
    known = sorted(serial_times)
    if len(known) >= 2:
        a, b = known[-2], known[-1]
        exponent = np.log(serial_times[b] / serial_times[a]) / np.log(b / a)
        guess = serial_times[b] * (n / b) ** max(exponent, 1.0)
    else:
        exponent, guess = 1.0, float("inf")
    note = {"extrapolated": guess, "exponent": float(exponent)}
    if guess <= args.serial_limit:
        took = compile_in_subprocess("serial", n, args.width, args.hidden, args.batch,
                                     args.serial_limit * 1.5)
        if took is not None:
            return dict(summary([took]), **note, subprocess=True)
        note["timed_out_after"] = args.serial_limit * 1.5
    results["not_measured"][f"serial {n}"] = note
    return dict(note, median=None)


def remat_dots_steps(args, rng):
    """Step time of stack, stack(remat) and stack(remat(dots)) against the floor, at the memory depths."""
    out = {}
    for n in args.remat_dots_depths:
        print(f"remat step at depth {n}", file=sys.stderr, flush=True)
        w = make_weights(n, args.width, args.hidden)
        xs = jnp.asarray(rng.standard_normal((args.batch, args.width)).astype(np.float32))
        batch = (xs, xs[::-1])
        built = {}
        for key in (FLOOR_KEY, "stack", "stack+remat", "stack+remat(dots)"):
            built[key] = CLASSES[key](n, args.width, args.hidden)
            built[key].load(w)
        steps = {k: impl.step() for k, impl in built.items()}
        samples, ratios, _ = step_rows(built, steps, batch, args.rounds_deep, args.block_seconds,
                                       rng, 0, 0)
        out[str(n)] = {k: {"median": statistics.median(r), "ci": list(median_ci(r)),
                           "pairs": len(r), "step": summary(samples[k])} for k, r in ratios.items()}
        del built
        gc.collect()
    return out


# ----------------------------------------------------------------------------
# output


def fmt_s(s):
    if s is None:
        return "-"
    return f"{s:.2f} s" if s < 10 else f"{s:.0f} s"


def fmt_ms(s):
    ms = s * 1e3
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def fmt_ratio(r):
    return f"{r['median']:.3f} [{r['ci'][0]:.3f}-{r['ci'][1]:.3f}] ({r['pairs']})"


def print_depth(results, n):
    comp, step = results["compile"][str(n)], results["step"][str(n)]
    for key in IMPLS:
        if key not in comp:
            continue
        c = comp[key]
        ctext = (f"{fmt_s(c['median'])} [{fmt_s(c['min'])}-{fmt_s(c['max'])}]"
                 if c.get("median") is not None else
                 f"not measured (extrapolated {fmt_s(c['extrapolated'])})")
        s = step.get(key)
        stext = f"{fmt_ms(s['median'])} [{fmt_ms(s['min'])}-{fmt_ms(s['max'])}]" if s else "-"
        r = results["ratios"][str(n)].get(key)
        print(f"| {n} | {LABELS[key]} | {ctext} | {stext} | {fmt_ratio(r) if r else '-'} |",
              flush=True)


def print_tables(results):
    print("| depth | implementation | cold compile, median [min-max] | step, median [min-max] "
          "| step / hand-written scan [95% CI] (pairs) |")
    print("|---|---|---|---|---|")
    for n in results["depths"]:
        print_depth(results, n)
    print()
    print("| depth | lm.stack compile / scan [min-max] (rounds) | lm.stack step / scan [95% CI] (pairs) |")
    print("|---|---|---|")
    for n in results["depths"]:
        r = results["ratios"][str(n)]
        if "compile stack" in r and "stack" in r:
            print(f"| {n} | {fmt_ratio(r['compile stack'])} | {fmt_ratio(r['stack'])} |")
    print()
    goals(results)
    if results["memory"]:
        print()
        print("| depth | step | arguments MB | temporaries MB | outputs MB | aliased MB | peak MB |")
        print("|---|---|---|---|---|---|---|")
        for n, rows in results["memory"].items():
            for key, m in rows.items():
                print(f"| {n} | {LABELS[key]} | {m['argument'] / MB:.1f} | {m['temp'] / MB:.1f} | "
                      f"{m['output'] / MB:.1f} | {m['alias'] / MB:.1f} | {m['peak'] / MB:.1f} |")
    if results.get("remat_dots_step"):
        print()
        print("| depth | step | step time | / hand-written scan [95% CI] (pairs) |")
        print("|---|---|---|---|")
        for n, rows in results["remat_dots_step"].items():
            for key, r in rows.items():
                print(f"| {n} | {LABELS[key]} | {fmt_ms(r['step']['median'])} | {fmt_ratio(r)} |")
    for what, note in results["not_measured"].items():
        print(f"\nnot measured: {what}: extrapolated {fmt_s(note['extrapolated'])} "
              f"(growth exponent {note['exponent']:.2f})")


def goals(results):
    depths = [n for n in results["depths"] if "stack" in results["compile"][str(n)]]
    if len(depths) < 2:
        return
    lo, hi = str(min(depths)), str(max(depths))
    c = results["compile"]
    growth = c[hi]["stack"]["median"] / c[lo]["stack"]["median"]
    r = results["ratios"][hi]
    print(f"goal: lm.stack compile at depth {hi} / depth {lo} = {growth:.2f} (<= 2: "
          f"{'met' if growth <= 2 else 'MISSED'})")
    if "compile stack" in r:
        v = r["compile stack"]["median"]
        print(f"goal: lm.stack compile / hand-written scan at depth {hi} = {v:.3f} (<= 1.1: "
              f"{'met' if v <= 1.1 else 'MISSED'})")
    for n in results["depths"]:
        s = results["ratios"][str(n)].get("stack")
        if s:
            print(f"goal: lm.stack step / hand-written scan at depth {n} = {fmt_ratio(s)} "
                  f"(<= 1.03: {'met' if s['median'] <= 1.03 else 'MISSED'})")


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for key in IMPLS:
        pts = [(n, results["compile"][str(n)][key]) for n in results["depths"]
               if key in results["compile"][str(n)]]
        pts = [(n, c) for n, c in pts if c.get("median") is not None]
        if not pts:
            continue
        ns = [n for n, _ in pts]
        med = np.array([c["median"] for _, c in pts])
        err = [med - [c["min"] for _, c in pts], [c["max"] for _, c in pts] - med]
        ax.errorbar(ns, med, yerr=err, marker="o", capsize=3, label=LABELS[key])
        guess = results["compile"][str(max(results["depths"]))].get(key, {})
        if guess.get("median") is None and guess.get("extrapolated"):
            ax.plot([ns[-1], max(results["depths"])], [med[-1], guess["extrapolated"]], ":",
                    color=ax.lines[-1].get_color(), label=f"{LABELS[key]} (extrapolated)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(results["depths"], [str(n) for n in results["depths"]])
    ax.set_xlabel("depth (blocks)")
    ax.set_ylabel("cold compile of the train step (s)")
    ax.set_title(f"residual MLP {results['width']}-{results['hidden']}, batch {results['batch']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="depths 2 and 4, width 32, one round")
    p.add_argument("--depths", default="4,16,64,256")
    p.add_argument("--impls", default=None, help="default: every one whose library imports")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--compile-rounds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=7, help="step-time pairs per impl")
    p.add_argument("--rounds-deep", type=int, default=4, help="pairs at the largest depth")
    p.add_argument("--block-seconds", type=float, default=0.3)
    p.add_argument("--precision", type=float, default=0.015,
                   help="lm.stack gets more pairs (up to 2x) until its ratio's CI is this tight")
    p.add_argument("--serial-max-inprocess", type=int, default=64,
                   help="deeper serial steps are compiled once, in a subprocess")
    p.add_argument("--serial-limit", type=float, default=180.0)
    p.add_argument("--memory-depths", default="64,256")
    p.add_argument("--remat-dots-depths", default="64",
                   help="depths at which stack(remat(dots_saveable)) step time is measured")
    p.add_argument("--json", help="where to save the results (full run: "
                   "benchmarks/results-2026-11-29-depth.json; --quick: not saved)")
    p.add_argument("--plot", help="where to save the plot (full run: "
                   "benchmarks/depth_compile.png; --quick: not drawn)")
    p.add_argument("--show", help="print the tables of a saved JSON")
    args = p.parse_args(argv)
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    args.depths, args.memory_depths = ints(args.depths), ints(args.memory_depths)
    args.remat_dots_depths = ints(args.remat_dots_depths)
    args.impls = available() if args.impls is None else [k for k in args.impls.split(",") if k]
    if args.quick:
        args.depths, args.width, args.hidden, args.batch = [2, 4], 32, 64, 8
        args.compile_rounds, args.rounds, args.rounds_deep = 1, 1, 1
        args.block_seconds, args.precision = 0.01, 0.0
        args.memory_depths, args.remat_dots_depths = [4], []  # keep the smoke run short
    else:
        args.json = args.json or os.path.join(HERE, "results-2026-11-29-depth.json")
        args.plot = args.plot or os.path.join(HERE, "depth_compile.png")
    return args


def main(argv=None):
    args = parse(argv)
    if args.show:
        with open(args.show) as f:
            results = json.load(f)
        print_tables(results)
        return results
    results = run(args)
    print()
    print_tables(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.plot:
        plot(results, args.plot)
    return results


if __name__ == "__main__":
    main()
