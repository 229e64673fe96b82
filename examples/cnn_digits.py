"""A small CNN on scikit-learn's 8x8 digits: convolution, pooling, batch norm.

The MLP of train_digits.py sees each image as 64 unrelated numbers; a
convolution slides one small set of weights over every 3x3 patch, so a
stroke is recognised wherever it lies. Same data and split as
train_digits.py, each image reshaped to one channel of 8x8 pixels,
`(1, 8, 8)`, channels first as in PyTorch. BatchNorm keeps running
statistics as explicit state: `lm.fit` takes `state=` and returns the
updated state with the params, and inference uses it. It prints the
model's summary, then the test accuracy (about 99% in 15 epochs).

    python examples/cnn_digits.py [--epochs 15] [--quick] [--no-progress]
"""

import argparse
import os
import sys
import time

import jax
import optax

import lamina as lm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_digits import load_data  # noqa: E402


def build():
    """Three conv blocks, 8x8 -> 4x4, then one value per channel and a dense classifier."""

    def block(channels, stride=1):
        # No conv bias: the BatchNorm right after it adds its own offset.
        conv = lm.Conv(channels, 3, stride=stride, padding=1, use_bias=False)
        return (conv, lm.BatchNorm(), lm.Relu())

    # A stride-2 convolution halves the image instead of MaxPool/AvgPool:
    # both currently fail to differentiate under jit (their reduce_window
    # gets a traced initial value), so lm.fit cannot train through them.
    # GlobalAvgPool averages each channel over the remaining 4x4 positions.
    return lm.serial(
        *block(32), *block(64, stride=2), *block(64),
        lm.GlobalAvgPool(), lm.Dense(10),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="3 epochs, for smoke tests")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    epochs = 3 if args.quick else args.epochs

    (x_train, y_train), (x_test, y_test) = load_data()
    x_train, x_test = x_train.reshape(-1, 1, 8, 8), x_test.reshape(-1, 1, 8, 8)
    print(f"digits: {len(x_train)} train, {len(x_test)} test images of shape {x_train.shape[1:]}")
    model = build()
    lm.summary(model, x_train.shape[1:])
    init_key, fit_key = jax.random.split(jax.random.key(args.seed))
    _, params = model.init(init_key, x_train.shape[1:])
    state = lm.init_state(model, x_train.shape[1:])
    steps = epochs * (len(x_train) // args.batch_size)
    # Decaying the step size lets the last epochs settle instead of bouncing.
    optimizer = optax.adam(optax.cosine_decay_schedule(args.lr, steps))

    start = time.perf_counter()
    params, history, state = lm.fit(
        model, params, optimizer, (x_train, y_train),
        loss_fn=optax.softmax_cross_entropy_with_integer_labels, epochs=epochs,
        batch_size=args.batch_size, key=fit_key, eval_data=(x_test, y_test),
        progress=not args.no_progress, state=state,
    )
    seconds = time.perf_counter() - start
    accuracy = history["eval_accuracy"][-1]
    print(f"test accuracy: {accuracy:.2%} after {epochs} epochs in {seconds:.1f} s")
    return {"accuracy": accuracy, "epochs": epochs, "seconds": seconds, "history": history,
            "model": model, "params": params, "state": state}


if __name__ == "__main__":
    main()
