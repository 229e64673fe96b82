"""Peak memory of lm.train_step: what XLA allocates for one Adam step.

XLA's compiled-memory analysis splits a program's memory into its arguments
(params, optimizer state, batch), outputs, outputs aliased to donated
arguments (reused in place), and temporaries (gradients, activations). Peak
is about arguments + temporaries + non-aliased outputs. The same step without
donation is measured beside it: its outputs need a second copy of params and
optimizer state.

    python benchmarks/memory.py
"""

import jax
import jax.numpy as jnp
import optax

import lamina as lm

MB = 1e6


def nbytes(tree):
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def main():
    sizes, batch = [1024, 2048, 2048, 1024], 256
    model = lm.mlp(sizes[1:])
    _, params = model.init(jax.random.key(0), (sizes[0],))
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)
    xent = optax.softmax_cross_entropy_with_integer_labels
    data = (jnp.ones((batch, sizes[0])), jnp.zeros(batch, jnp.int32))
    activations = batch * sum(sizes) * 4

    donated = lm.train_step(model, xent, opt)
    copying = jax.jit(donated.__wrapped__ if hasattr(donated, "__wrapped__") else donated)
    print(f"params {nbytes(params) / MB:.1f} MB, Adam state {nbytes(opt_state) / MB:.1f} MB, "
          f"batch {nbytes(data) / MB:.1f} MB, activations ~{activations / MB:.1f} MB\n")
    print("| step | arguments MB | temporaries MB | outputs MB | aliased MB | peak ~MB |")
    print("|---|---|---|---|---|---|")
    report = {}
    for name, fn in (("lm.train_step (donates)", donated), ("same step, no donation", copying)):
        m = fn.lower(params, opt_state, data).compile().memory_analysis()
        peak = m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
        report[name] = peak
        print(f"| {name} | {m.argument_size_in_bytes / MB:.1f} | {m.temp_size_in_bytes / MB:.1f} | "
              f"{m.output_size_in_bytes / MB:.1f} | {m.alias_size_in_bytes / MB:.1f} | {peak / MB:.1f} |")
    floor = nbytes(params) * 2 + nbytes(opt_state) + nbytes(data) + activations
    print(f"\nparams + gradients + Adam state + batch + activations = {floor / MB:.1f} MB")
    return report, floor


if __name__ == "__main__":
    main()
