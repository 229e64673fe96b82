"""Two processes training by hand and by fit over iterables, run by tests/test_multiprocess.py.

    python tests/multiprocess_step_script.py PROCESS_ID PORT OUT_DIR

Each of two processes has 2 CPU devices, and they do, one after the other:
`step`: lm.train_step on a 2 x 2 mesh ("data" across the processes, "model"
within each); `fit`: lm.fit over a list of batches; `differ`: fit from
different params in each process, which is refused; `short`: process 1's
iterable ends early, which stops both. Every process feeds its own half of
every batch. Process 0 writes OUT_DIR/step.npz and OUT_DIR/fit.npz and
prints what it saw.
"""

import os
import sys


def batches(steps=6, size=16):
    import numpy as np

    rng = np.random.default_rng(0)
    xs = rng.normal(size=(steps * size, 8)).astype(np.float32)
    ys = (xs[:, 0] + xs[:, 1] > 0).astype(np.int32) + (xs[:, 2] > 1)
    return [(xs[i:i + size], ys[i:i + size]) for i in range(0, len(xs), size)]


def setup():
    import jax
    import optax

    import lamina as lm

    model = lm.mlp([16, 8, 3])
    _, params = model.init(jax.random.key(0), (8,))
    opt = optax.adam(1e-2)
    return model, params, opt, lm.train_step(
        model, optax.softmax_cross_entropy_with_integer_labels, opt)


def main(process_id, port, out):
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax
    import numpy as np
    import optax
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh

    import lamina as lm

    process_id = int(process_id)
    lm.initialize_distributed(f"127.0.0.1:{port}", 2, process_id, timeout=60)
    model, params, opt, step = setup()
    half = slice(process_id * 8, (process_id + 1) * 8)
    mine = [(xs[half], ys[half]) for xs, ys in batches()]
    xent = optax.softmax_cross_entropy_with_integer_labels

    def save(name, tree):
        if process_id == 0:
            np.savez(os.path.join(out, name), *[np.asarray(a) for a in jax.tree.leaves(tree)])

    # step: a train_step loop on a mesh over both processes.
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
    placed = lm.shard_params(params, mesh, model=model)
    opt_state = opt.init(placed)
    for batch in mine:
        placed, opt_state, _ = step(placed, opt_state, lm.shard_batch(batch, mesh))
    if process_id == 0:
        print(f"first W split as {placed[0]['W'].sharding.spec}", flush=True)
    # Gathered for writing: the weights are split over the devices.
    save("step.npz", multihost_utils.process_allgather(placed, tiled=True))

    # fit over iterables, each process half of every batch.
    trained, history = lm.fit(model, params, opt, mine, epochs=2, key=jax.random.key(1),
                              loss_fn=xent, progress=False)
    if process_id == 0:
        print(f"losses {history['train_loss']}", flush=True)
    save("fit.npz", trained)

    # differ: process 1 starts from other params; short: its iterable ends early.
    _, other = model.init(jax.random.key(process_id), (8,))
    for name, p, data in (("differ", other, mine), ("short", params, mine[: 6 - process_id])):
        try:
            lm.fit(model, p, opt, data, epochs=1, key=jax.random.key(1), loss_fn=xent,
                   progress=False)
            print(f"{name}: trained", flush=True)
        except lm.LaminaError as error:
            print(f"{name}: {error}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
