"""A small ResNet on CIFAR-shaped images, built from lamina's layers alone.

No data set of 32x32 colour images ships here, so the images are synthetic:
each of 10 classes is a random colour and a coarse layout of light and dark,
and an image is its class's pattern, randomly shifted, under strong noise. The model is
torchvision's ResNet design at a small width: a stem convolution, then
basic blocks (two 3x3 convolutions with batch norm, added to a shortcut)
in three stages that halve the image and double the channels; a stage's
first block projects its shortcut with a strided 1x1 convolution, written
`serial(parallel(main, shortcut), Add(), Relu())`. It prints the summary
and the test accuracy.

    python examples/resnet_cifar.py [--epochs 4] [--size 32] [--quick] [--no-progress]
"""

import argparse
import time

import jax
import numpy as np
import optax

import lamina as lm


def basic_block(channels, stride=1, project=False):
    """torchvision's BasicBlock: conv-bn-relu-conv-bn, plus the shortcut, then relu."""
    main = lm.serial(
        lm.Conv(channels, 3, stride=stride, padding=1, use_bias=False), lm.BatchNorm(), lm.Relu(),
        lm.Conv(channels, 3, padding=1, use_bias=False), lm.BatchNorm(),
    )
    if not project:
        return lm.serial(lm.residual(main), lm.Relu())
    shortcut = lm.serial(lm.Conv(channels, 1, stride=stride, use_bias=False), lm.BatchNorm())
    return lm.serial(lm.parallel(main, shortcut), lm.Add(), lm.Relu())


def build(width=16, classes=10):
    return lm.serial(
        lm.Conv(width, 3, padding=1, use_bias=False), lm.BatchNorm(), lm.Relu(),
        basic_block(width), basic_block(width),
        basic_block(2 * width, stride=2, project=True), basic_block(2 * width),
        basic_block(4 * width, stride=2, project=True), basic_block(4 * width),
        lm.GlobalAvgPool(), lm.Dense(classes),
    )


def synthetic(n, size, rng, patterns):
    """`(images, labels)`: each class's pattern, shifted by up to 3 pixels, under noise."""
    labels = rng.integers(0, len(patterns), n).astype(np.int32)
    shifts = rng.integers(-3, 4, (n, 2))
    images = np.stack([np.roll(patterns[y], tuple(s), axis=(1, 2)) for y, s in zip(labels, shifts)])
    images = images + rng.standard_normal(images.shape).astype(np.float32)
    return images.astype(np.float32), labels


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--size", type=int, default=32, help="image height and width")
    parser.add_argument("--train", type=int, default=2048, help="training images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="16x16, 512 images, 2 epochs")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.train, args.epochs = 16, 512, 2

    rng = np.random.default_rng(args.seed)
    # A class is a colour and a coarse 4x4 layout of light and dark, blown up.
    colours = rng.standard_normal((10, 3, 1, 1))
    layouts = np.kron(rng.standard_normal((10, 1, 4, 4)), np.ones((1, 1, args.size // 4, args.size // 4)))
    patterns = (0.7 * colours + layouts).astype(np.float32)
    x_train, y_train = synthetic(args.train, args.size, rng, patterns)
    x_test, y_test = synthetic(1000, args.size, rng, patterns)
    shape = x_train.shape[1:]
    print(f"synthetic CIFAR-shaped data: {len(x_train)} train, {len(x_test)} test images of "
          f"shape {shape}")

    model = build()
    lm.summary(model, shape)
    init_key, fit_key = jax.random.split(jax.random.key(args.seed))
    _, params = model.init(init_key, shape)
    state = lm.init_state(model, shape)
    steps = args.epochs * (len(x_train) // args.batch_size)
    start = time.perf_counter()
    params, history, state = lm.fit(
        model, params, optax.adam(optax.cosine_decay_schedule(args.lr, steps)), (x_train, y_train),
        loss_fn=optax.softmax_cross_entropy_with_integer_labels, epochs=args.epochs,
        batch_size=args.batch_size, key=fit_key, eval_data=(x_test, y_test), state=state,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - start
    accuracy = history["eval_accuracy"][-1]
    print(f"test accuracy: {accuracy:.2%} after {args.epochs} epochs in {seconds:.1f} s")
    return {"model": model, "params": params, "state": state, "history": history,
            "accuracy": accuracy, "test": (x_test, y_test)}


if __name__ == "__main__":
    main()
