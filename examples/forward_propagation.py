"""Steps 6-9 of the lesson: a network with one hidden layer, one step at a time.

Three input features describe a food (size, shape, nutrition score); a hidden
layer of four ReLU units combines them; one sigmoid output scores the food.
`lm.trace` shows every weighted sum and activation on the way, and
`forward_propagation.html` lets you step through them in a browser.

    python examples/forward_propagation.py [--out DIR] [--no-plot]
"""

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

import lamina as lm

FEATURES = ["size", "shape", "nutrition"]


def build():
    model = lm.serial(lm.Dense(4, act="relu"), lm.Dense(1, act="sigmoid"))
    _, params = model.init(jax.random.key(8), (len(FEATURES),))
    return model, params


def print_trace(steps):
    np.set_printoptions(precision=3, suppress=True)
    for step in steps:
        W, b = step.params["W"], step.params["b"]
        print(f"--- {step.path}: {step.name}")
        print(f"input x          {np.asarray(step.input)}")
        print(f"weights W (out, in) =\n{np.asarray(W)}")
        print(f"bias b           {np.asarray(b)}")
        print(f"weighted sum z = x . W^T + b = {np.asarray(step.weighted_sum)}")
        first = " + ".join(f"{w:.3f}*{xi:.3f}" for w, xi in zip(np.asarray(W[0]), np.asarray(step.input)))
        print(f"  e.g. z[0] = {first} + {float(b[0]):.3f} = {float(step.weighted_sum[0]):.3f}")
        print(f"activation output = {np.asarray(step.output)}\n")


def check_linear_collapse(params, x):
    """Without activations, two layers are one linear map: W = W2 W1, b = W2 b1 + b2."""
    linear = lm.serial(lm.Dense(4), lm.Dense(1))
    stacked = linear.apply(params, x)
    (W1, b1), (W2, b2) = ((p["W"], p["b"]) for p in params)
    collapsed = lm.dense({"W": W2 @ W1, "b": W2 @ b1 + b2}, x)
    np.testing.assert_allclose(stacked, collapsed, rtol=1e-5, atol=1e-6)
    print("Without activations the two layers equal ONE dense layer with")
    print(f"W = W2 @ W1 = {np.asarray(W2 @ W1)} and b = W2 @ b1 + b2 = {np.asarray(W2 @ b1 + b2)}:")
    print(f"stacked {np.asarray(stacked)} == collapsed {np.asarray(collapsed)}. That is why")
    print("a network needs non-linear activations to be more than linear regression.\n")


def plot(steps, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [np.asarray(steps[0].input)] + [np.asarray(s.output) for s in steps]
    labels = ["input"] + [s.name for s in steps]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    pos = [
        [(c, (len(col) - 1) / 2 - i) for i in range(len(col))] for c, col in enumerate(columns)
    ]
    for c, step in enumerate(steps):
        W = np.asarray(step.params["W"])
        scale = np.abs(W).max()
        for o in range(W.shape[0]):
            for i in range(W.shape[1]):
                (x0, y0), (x1, y1) = pos[c][i], pos[c + 1][o]
                ax.plot([x0, x1], [y0, y1], color="tab:blue" if W[o, i] >= 0 else "tab:red",
                        lw=0.5 + 3 * abs(W[o, i]) / scale, alpha=0.6, zorder=1)
    top = max(len(col) for col in columns) / 2
    for c, col in enumerate(columns):
        for (x, y), value in zip(pos[c], col):
            ax.scatter([x], [y], s=900, c=[value], cmap="cividis", vmin=0, vmax=max(1.0, col.max()),
                       edgecolors="black", zorder=2)
            ax.text(x, y, f"{value:.2f}", ha="center", va="center", fontsize=8, color="white",
                    fontweight="bold", zorder=3)
        ax.text(c, top + 0.6, labels[c], ha="center", fontsize=9)
    for i, name in enumerate(FEATURES):
        ax.text(-0.25, pos[0][i][1], name, ha="right", va="center", fontsize=9)
    ax.set_title("Forward propagation (blue: positive weight, red: negative; width: |w|)")
    ax.set_xlim(-1, len(columns) - 0.5)
    ax.set_ylim(-top - 0.3, top + 1.0)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="folder for forward_propagation.png and .html")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG figure")
    args = parser.parse_args(argv)

    model, params = build()
    x = jnp.array([0.8, 0.3, 0.9])  # size, shape, nutrition, scaled to [0, 1]
    print(f"model: {model.name}\ninput features {dict(zip(FEATURES, [round(v, 3) for v in x.tolist()]))}\n")
    steps = lm.trace(model, params, x)
    print_trace(steps)
    y = model.apply(params, x)
    assert np.allclose(y, steps[-1].output)
    print(f"prediction: {float(y[0]):.4f}\n")
    check_linear_collapse(params, x)
    os.makedirs(args.out, exist_ok=True)
    if not args.no_plot:
        plot(steps, os.path.join(args.out, "forward_propagation.png"))
    page = os.path.join(args.out, "forward_propagation.html")
    lm.visualize(model, params, x, path=page)
    print(f"wrote {page}: open it in a browser and step with the arrow keys")
    return float(y[0])


if __name__ == "__main__":
    main()
