"""Two processes training by hand and by fit over iterables, run by tests/test_multiprocess.py.

    python tests/multiprocess_step_script.py step|fit|differ|short PROCESS_ID PORT OUT

Each of two processes has 2 CPU devices. `step`: lm.train_step on a 2 x 2
mesh ("data" across the processes, "model" within each); `fit`: lm.fit over
a list of batches; `differ`: fit from different params in each process,
which is refused; `short`: process 1's iterable ends early, which stops
both. Every process feeds its own half of every batch; process
0 writes the final params to OUT (.npz).
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


def main(mode, process_id, port, out):
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
    if mode == "differ":  # process 1 starts from other params: refused, not trained
        _, other = model.init(jax.random.key(process_id), (8,))
        try:
            lm.fit(model, other, opt, [(xs[half], ys[half]) for xs, ys in batches()], epochs=1,
                   key=jax.random.key(1), progress=False,
                   loss_fn=optax.softmax_cross_entropy_with_integer_labels)
        except lm.LaminaError as error:
            print(f"refused: {error}", flush=True)
            np.savez(out, np.zeros(1))
        return
    if mode == "short":  # process 1's iterable ends a batch early: both stop, named
        mine = [(xs[half], ys[half]) for xs, ys in batches()][: 6 - process_id]
        try:
            lm.fit(model, params, opt, mine, epochs=1, key=jax.random.key(1), progress=False,
                   loss_fn=optax.softmax_cross_entropy_with_integer_labels)
        except lm.LaminaError as error:
            print(f"refused: {error}", flush=True)
            np.savez(out, np.zeros(1))
        return
    if mode == "fit":
        mine = [(xs[half], ys[half]) for xs, ys in batches()]
        params, history = lm.fit(model, params, opt, mine, epochs=2, key=jax.random.key(1),
                                 loss_fn=optax.softmax_cross_entropy_with_integer_labels,
                                 progress=False)
        if process_id == 0:
            print(f"losses {history['train_loss']}", flush=True)
            np.savez(out, *[np.asarray(leaf) for leaf in jax.tree.leaves(params)])
        return
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
    params = lm.shard_params(params, mesh, model=model)
    opt_state = opt.init(params)
    for xs, ys in batches():
        params, opt_state, metrics = step(params, opt_state,
                                          lm.shard_batch((xs[half], ys[half]), mesh))
    spec = params[0]["W"].sharding.spec
    # Gathered for writing: the weights are split over the devices.
    full = multihost_utils.process_allgather(params, tiled=True)
    if process_id == 0:
        print(f"first W split as {spec}", flush=True)
        np.savez(out, *[np.asarray(leaf) for leaf in jax.tree.leaves(full)])


if __name__ == "__main__":
    main(*sys.argv[1:])
