"""Train the digits MLP data-parallel over several processes, with JAX's distributed runtime.

Each process runs this same program. Process 0 hosts the coordinator; all
of them join with `lm.initialize_distributed`, after which `lm.fit` sees every
process's devices as one mesh: params replicated, each batch split over all
devices. Each process loads only its own part of the training set (a
contiguous block of rows, process 0's first) and the whole test set; the
batches, the shuffling and the result are those of one process training on
all the rows. Process 0 alone shows the progress bar and prints.

Start N processes, in N shells or on N machines (with process 0's address):

    python examples/multiprocess_training.py --num-processes 2 --process-id 0 --coordinator 127.0.0.1:12355
    python examples/multiprocess_training.py --num-processes 2 --process-id 1 --coordinator 127.0.0.1:12355

or let one command start N local processes: `--launch 2`. On a CPU each
process pretends to have `--devices` devices (2 by default).
"""

import argparse
import os
import socket
import subprocess
import sys
import time


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--coordinator", default="127.0.0.1:12355", help="process 0's host:port")
    parser.add_argument("--launch", type=int, metavar="N",
                        help="start N local processes of this program and wait for them")
    parser.add_argument("--devices", type=int, default=2, help="CPU devices per process")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch")
    parser.add_argument("--checkpoint-dir", help="resumable checkpoints, shared by the processes")
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the coordinator and the other processes")
    parser.add_argument("--out", help="write the trained params here (process 0), as .npz")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def shard(n_rows, num_processes, process_id, devices):
    """This process's block of rows: an equal share, whole for every device; a few left over."""
    per = n_rows // (num_processes * devices) * devices
    return slice(process_id * per, (process_id + 1) * per)


def load_digits():
    from sklearn.datasets import load_digits as digits
    from sklearn.model_selection import train_test_split

    images, labels = digits(return_X_y=True)
    images = (images / 16.0).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels.astype("int32"), test_size=0.25, random_state=0, stratify=labels)
    return (x_train, y_train), (x_test, y_test)


def train(args, rows):
    """fit on this process's `rows` of the training set; returns (params, history, test set)."""
    import jax
    import optax

    import lamina as lm

    (x_train, y_train), test = load_digits()
    model = lm.mlp([256, 128, 10])
    _, params = model.init(jax.random.key(0), (64,))  # the same params in every process
    more = {}
    if args.checkpoint_dir:
        more = dict(checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every)
    params, history = lm.fit(
        model, params, optax.adam(1e-3), (x_train[rows], y_train[rows]),
        loss_fn=optax.softmax_cross_entropy_with_integer_labels, epochs=args.epochs,
        batch_size=args.batch_size, key=jax.random.key(1), eval_data=test,
        progress=not args.no_progress, **more)
    return model, params, history


def main(argv=None):
    args = parse(argv)
    if args.launch:
        return launch(args, argv if argv is not None else sys.argv[1:])
    # Before JAX starts: a CPU process pretends to have several devices.
    flag = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    import jax
    import numpy as np

    import lamina as lm

    start = time.perf_counter()
    if args.num_processes > 1:
        lm.initialize_distributed(args.coordinator, args.num_processes, args.process_id,
                                  timeout=args.timeout)
    rows = shard(1347, args.num_processes, args.process_id, jax.local_device_count())
    model, params, history = train(args, rows)
    if args.process_id != 0:
        return 0
    print(f"{jax.process_count()} process(es), {jax.device_count()} devices, "
          f"{rows.stop - rows.start} training rows per process")
    print(f"final loss: {history['train_loss'][-1]:.4f}")
    print(f"test accuracy: {100 * history['eval_accuracy'][-1]:.2f}% after {args.epochs} "
          f"epochs in {time.perf_counter() - start:.1f} s")
    if args.out:
        np.savez(args.out, *[np.asarray(leaf) for leaf in jax.tree.leaves(params)])
    return 0


def launch(args, argv):
    """Starts `--launch N` local processes of this program on a free port; waits for all."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    rest, skip = [], False
    for arg in argv:  # the same arguments, less --launch and the ones set here
        if skip:
            skip = False
        elif arg in ("--launch", "--process-id", "--num-processes", "--coordinator"):
            skip = True
        elif not arg.startswith(("--launch=", "--process-id=", "--num-processes=",
                                 "--coordinator=")):
            rest.append(arg)
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), *rest,
                               "--num-processes", str(args.launch), "--process-id", str(i),
                               "--coordinator", f"127.0.0.1:{port}"])
             for i in range(args.launch)]
    codes = [p.wait() for p in procs]
    if any(codes):
        print(f"process exit codes: {codes}", file=sys.stderr)
    return max(codes, key=abs)


if __name__ == "__main__":
    sys.exit(main())
