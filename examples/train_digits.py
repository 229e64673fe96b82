"""The main job: train an MLP on scikit-learn's 8x8 handwritten digits.

The data ships inside scikit-learn (no download). A fixed split keeps 25% of
the 1,797 images for testing; Adam trains a 64-256-128-10 MLP; a progress bar
shows the loss. At the end it prints the test accuracy, saves the loss and
accuracy curves, and draws a few test digits with their predicted labels.
With `--html PATH` it also writes an interactive page of one test digit's
forward propagation through the trained network.

    python examples/train_digits.py [--epochs 30] [--out DIR] [--quick] [--html PATH]
"""

import argparse
import os
import time

import jax
import numpy as np
import optax

import lamina as lm


def load_data():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype(np.float32)  # pixels 0..16 -> 0..1
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels.astype(np.int32), test_size=0.25, random_state=0, stratify=labels
    )
    return (x_train, y_train), (x_test, y_test)


def ascii_digit(pixels):
    shades = " .:-=+*#%@"
    rows = np.asarray(pixels).reshape(8, 8)
    return ["".join(shades[int(v * 9.99)] * 2 for v in row) for row in rows]


def plot_history(history, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history["train_loss"]) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, history["train_loss"], label="train")
    left.plot(epochs, history["eval_loss"], label="test")
    left.set(xlabel="epoch", ylabel="cross-entropy loss", yscale="log", title="Loss")
    left.legend()
    right.plot(epochs, np.asarray(history["eval_accuracy"]) * 100)
    right.set(xlabel="epoch", ylabel="test accuracy (%)", title="Accuracy")
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=".", help="folder for digits_training.png")
    parser.add_argument("--quick", action="store_true", help="5 epochs, for smoke tests")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--html", metavar="PATH", help="write the forward pass of one test digit as a page")
    args = parser.parse_args(argv)
    epochs = 5 if args.quick else args.epochs

    (x_train, y_train), (x_test, y_test) = load_data()
    print(f"digits: {len(x_train)} train, {len(x_test)} test images of 8x8 pixels")
    model = lm.serial(lm.Dense(256, act="relu"), lm.Dense(128, act="relu"), lm.Dense(10))
    init_key, fit_key = jax.random.split(jax.random.key(args.seed))
    _, params = model.init(init_key, (64,))
    loss_fn = optax.softmax_cross_entropy_with_integer_labels

    start = time.perf_counter()
    params, history = lm.fit(
        model, params, optax.adam(args.lr), (x_train, y_train),
        loss_fn=loss_fn, epochs=epochs, batch_size=args.batch_size, key=fit_key,
        eval_data=(x_test, y_test), progress=not args.no_progress,
    )
    seconds = time.perf_counter() - start
    accuracy = history["eval_accuracy"][-1]
    print(f"test accuracy: {accuracy:.2%} after {epochs} epochs in {seconds:.1f} s")

    os.makedirs(args.out, exist_ok=True)
    curve = os.path.join(args.out, "digits_training.png")
    plot_history(history, curve)
    print(f"wrote {curve}")

    predictions = np.asarray(lm.forward(model)(params, x_test[:4]).argmax(-1))
    pictures = [ascii_digit(x) for x in x_test[:4]]
    print("\n" + "   ".join(f"predicted {p}, true {t}".ljust(16) for p, t in zip(predictions, y_test[:4])))
    for row in zip(*pictures):
        print("   ".join(r.ljust(16) for r in row))
    if args.html:
        lm.visualize(model, params, x_test[0], path=args.html)
        print(f"\nwrote {args.html}: the first test digit's forward pass, step by step")
    return {"accuracy": accuracy, "seconds": seconds, "history": history}


if __name__ == "__main__":
    main()
