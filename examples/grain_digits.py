"""Train the digits MLP from a grain data loader, with resumable checkpoints.

grain is the JAX ecosystem's data loader: a random-access source, a sampler
that shuffles it every epoch, and operations such as batching. `lm.fit`
takes the loader as it is, as it takes a generator or a torch DataLoader;
a short last batch is padded and masked, so nothing recompiles. With
`--checkpoints DIR`, stop the run at any moment (Ctrl-C, or kill it) and
start it again: it goes on from the latest checkpoint, the loader from its
saved position.

    python examples/grain_digits.py [--epochs 10] [--checkpoints DIR] [--quick]
"""

import argparse
import time

import grain
import jax
import numpy as np
import optax

import lamina as lm


def load_data():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype(np.float32)  # pixels 0..16 -> 0..1
    return train_test_split(images, labels.astype(np.int32), test_size=0.25, random_state=0,
                            stratify=labels)


class Digits:
    """A grain data source: `len` and one `(image, label)` record per index."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def loader(images, labels, *, epochs, batch_size, seed):
    return grain.DataLoader(
        data_source=Digits(images, labels),
        sampler=grain.samplers.IndexSampler(
            len(images), shuffle=True, seed=seed, num_epochs=epochs,
            shard_options=grain.sharding.NoSharding()),
        operations=[grain.transforms.Batch(batch_size)],  # stacks (image, label) pairs
        worker_count=0,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--checkpoints", metavar="DIR", help="resumable checkpoints here")
    parser.add_argument("--quick", action="store_true", help="3 epochs, for smoke tests")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    epochs = 3 if args.quick else args.epochs

    x_train, x_test, y_train, y_test = load_data()
    # One pass of the loader covers every epoch: its sampler reshuffles each one.
    data = loader(x_train, y_train, epochs=epochs, batch_size=args.batch_size, seed=0)
    model = lm.serial(lm.Dense(256, act="relu"), lm.Dense(128, act="relu"), lm.Dense(10))
    _, params = model.init(jax.random.key(0), (64,))
    start = time.perf_counter()
    params, history = lm.fit(
        model, params, optax.adam(1e-3), data,
        loss_fn=optax.softmax_cross_entropy_with_integer_labels, epochs=1,
        key=jax.random.key(1), eval_data=(x_test, y_test), progress=not args.no_progress,
        checkpoint_dir=args.checkpoints, checkpoint_every=50,
    )
    seconds = time.perf_counter() - start
    accuracy = history["eval_accuracy"][-1]
    print(f"test accuracy: {accuracy:.2%} after {epochs} epochs from a grain loader "
          f"in {seconds:.1f} s")
    return {"accuracy": accuracy, "history": history, "params": params}


if __name__ == "__main__":
    main()
