"""A small conditional U-Net that removes noise from scikit-learn's 8x8 digits.

Each training example is a digit with Gaussian noise of a random strength
`sigma` added, and the model is told `sigma`: it takes two inputs, the noisy
image `(1, 8, 8)` and `sigma` `(1,)`, and predicts the noise (the training
target of a diffusion model). The U-Net is lamina's layers only: `Select`
routes each input, `Dense` and `Reshape` turn `sigma` into a per-channel
shift that `Add` broadcasts over the image, `AvgPool` halves the image and
`Upsample` doubles it back, and `Concat` joins the skip connection. It
prints the test split's mean squared error of the predicted noise beside
that of predicting no noise at all, per noise strength.

    python examples/unet_denoiser.py [--epochs 30] [--quick] [--no-progress]
"""

import argparse
import os
import sys
import time

import jax
import numpy as np
import optax

import lamina as lm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_digits import load_data  # noqa: E402

SIGMAS = (0.25, 0.5, 1.0)  # the noise strengths reported on the test split


def build(width=32):
    """The image and its noise strength in, the predicted noise out, at 8x8 and 4x4."""

    def conv(channels):
        return lm.Conv(channels, 3, padding=1, act="silu")

    image = lm.serial(lm.Select(0), conv(width))
    strength = lm.serial(lm.Select(1), lm.Dense(width, act="silu"), lm.Dense(width),
                         lm.Reshape((width, 1, 1)))
    down_and_up = lm.serial(lm.AvgPool(2), conv(2 * width), conv(2 * width),
                            lm.Upsample(2, mode="bilinear"), conv(width))
    return lm.serial(
        lm.parallel(image, strength), lm.Add(),           # (width, 8, 8), shifted by sigma
        lm.parallel(down_and_up, lm.Identity()),          # the U and its skip connection
        lm.Concat(axis=0), conv(width), lm.Conv(1, 3, padding=1),
    )


def noisy(images, sigmas, rng):
    """`((images + sigma * noise, sigma), noise)`: a denoiser's inputs and target."""
    noise = rng.standard_normal(images.shape).astype(np.float32)
    s = sigmas.astype(np.float32)
    return (images + s[:, None, None, None] * noise, s[:, None]), noise


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="3 epochs, for smoke tests")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    epochs = 3 if args.quick else args.epochs

    (x_train, _), (x_test, _) = load_data()
    # Pixels 0..1 -> -1..1, one channel of 8x8, channels first.
    x_train, x_test = (2 * x.reshape(-1, 1, 8, 8) - 1 for x in (x_train, x_test))
    rng = np.random.default_rng(args.seed)
    # Every epoch could draw new noise; one draw per image keeps the data fixed
    # for lm.fit's arrays feed (and its resume check).
    train = noisy(x_train, rng.uniform(0.1, 1.0, len(x_train)), rng)

    model = build()
    shapes = ((1, 8, 8), (1,))
    lm.summary(model, shapes)
    init_key, fit_key = jax.random.split(jax.random.key(args.seed))
    _, params = model.init(init_key, shapes)
    steps = epochs * -(-len(x_train) // args.batch_size)
    start = time.perf_counter()
    params, history = lm.fit(
        model, params, optax.adam(optax.cosine_decay_schedule(args.lr, steps)), train,
        loss_fn=optax.squared_error, epochs=epochs, batch_size=args.batch_size, key=fit_key,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - start

    results = {}
    for sigma in SIGMAS:
        inputs, noise = noisy(x_test, np.full(len(x_test), sigma), np.random.default_rng(1))
        predicted = np.asarray(lm.forward(model)(params, inputs))
        results[sigma] = (float(np.mean((predicted - noise) ** 2)), float(np.mean(noise**2)))
        print(f"sigma {sigma}: test noise MSE {results[sigma][0]:.4f} "
              f"(predicting no noise: {results[sigma][1]:.4f})")
    print(f"final loss: {history['train_loss'][-1]:.4f} after {epochs} epochs in {seconds:.1f} s")
    return {"model": model, "params": params, "history": history, "mse": results,
            "x_test": x_test}


if __name__ == "__main__":
    main()
