"""Train the digits MLP on a 2x4 device mesh: data parallel x tensor parallel.

The model code is the one from train_digits.py. Only the placement changes:
`shard_params` splits every weight matrix over the mesh's "model" axis and
`shard_batch` splits every batch over its "data" axis; `lm.train_step` is the
same function, and XLA's SPMD partitioner inserts the collectives. The same
run on one device is printed beside it.

On this CPU the 8 devices are simulated (XLA_FLAGS below); on a GPU or TPU
host the same code uses the real devices, and across hosts you call
`jax.distributed.initialize()` first.

    python examples/sharded_training.py [--mesh 2x4] [--epochs 20]
"""

import os

# Must happen before JAX starts; harmless on GPU/TPU hosts.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

import lamina as lm  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_digits import load_data  # noqa: E402


def train(model, params, train_data, epochs, batch_size, key, mesh=None):
    """Plain train_step loop; with a mesh, params and batches are placed on it."""
    opt = optax.adam(1e-3)
    xent = optax.softmax_cross_entropy_with_integer_labels
    step = lm.train_step(model, xent, opt)
    place = (lambda b: lm.shard_batch(b, mesh)) if mesh is not None else (lambda b: b)
    if mesh is not None:
        params = lm.shard_params(params, mesh)
    opt_state = opt.init(params)
    xs, ys = train_data
    steps = len(xs) // batch_size  # full batches only: each splits evenly over "data"
    for epoch in range(epochs):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), len(xs)))
        for i in range(steps):
            idx = order[i * batch_size : (i + 1) * batch_size]
            params, opt_state, metrics = step(params, opt_state, place((xs[idx], ys[idx])))
            # XLA:CPU runs simulated devices on one thread pool; letting steps
            # queue up behind each other's collectives can starve it (seen on
            # a loaded 2-core machine). Real accelerators need no such wait.
            if mesh is not None and jax.default_backend() == "cpu":
                jax.block_until_ready(metrics)
    return params, float(metrics["loss"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mesh", default="2x4", help="DATAxMODEL, e.g. 2x4, 1x8, 8x1")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    data, model_axis = (int(n) for n in args.mesh.split("x"))
    if jax.device_count() < data * model_axis:
        raise SystemExit(f"a {args.mesh} mesh needs {data * model_axis} devices, "
                         f"this process has {jax.device_count()}")
    mesh = Mesh(np.array(jax.devices()[: data * model_axis]).reshape(data, model_axis), ("data", "model"))

    (x_train, y_train), (x_test, y_test) = load_data()
    model = lm.mlp([256, 128, 10])
    _, params = model.init(jax.random.key(0), (64,))
    fwd = lm.forward(model)
    results = {}
    for label, where in (("single", None), ("mesh", mesh)):
        trained, loss = train(model, jax.tree.map(jnp.copy, params), (x_train, y_train),
                              args.epochs, args.batch_size, jax.random.key(1), where)
        test_x = jnp.asarray(x_test) if where is None else lm.shard_batch(jnp.asarray(x_test), mesh)
        accuracy = float(lm.accuracy(fwd(trained, test_x), y_test))
        results[f"{label}_accuracy"], results[f"{label}_loss"] = accuracy, loss
        placement = "one device" if where is None else f"{args.mesh} mesh ({dict(mesh.shape)})"
        print(f"{placement:>40}: test accuracy {accuracy:.2%}, last train loss {loss:.4f}")
        if where is not None:
            print(f"{'':>40}  first W split as {trained[0]['W'].sharding.spec}, "
                  f"second as {trained[1]['W'].sharding.spec}")
    return results


if __name__ == "__main__":
    main()
