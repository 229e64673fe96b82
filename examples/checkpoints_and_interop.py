"""Weights in and out: checkpoints, PyTorch exchange, a summary and a served forward.

A small MLP learns a toy three-class task. Its params go to a safetensors
file (written atomically, with text metadata) and come back bit for bit. With
PyTorch installed, the same numbers run in `torch.nn.Sequential` unchanged:
lamina's `W` is `(out, in)` like `nn.Linear.weight`, so nothing is transposed.
A summary counts parameters and FLOPs without running the model. Finally the
forward pass is exported with its weights to a `jax.export` artifact, which
serves any batch size with nothing but jax.

    python examples/checkpoints_and_interop.py [--out DIR] [--epochs 20]
"""

import argparse
import os

import jax
import numpy as np
import optax
import safetensors.numpy

import lamina as lm


def make_data(n=512, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(n, 4)).astype(np.float32)
    directions = np.array([[1.0, 1.0, 0.0, 0.0], [-1.0, 0.5, 1.0, 0.0], [0.0, -1.0, -0.5, 1.0]])
    ys = np.argmax(xs @ directions.T, axis=1).astype(np.int32)  # which direction x leans to
    return xs, ys


def exchange_with_torch(model, params, xs):
    """Runs lamina's weights in PyTorch and brings them back; None without torch."""
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: skipping the exchange (pip install torch to see it).\n")
        return None
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    state = lm.to_torch(params, like=module.state_dict())  # lamina 0.W -> torch 0.weight, 1.W -> 2.weight
    module.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    with torch.no_grad():
        torch_out = module(torch.as_tensor(xs)).numpy()
    lamina_out = np.asarray(lm.forward(model)(params, xs))
    diff = float(np.abs(torch_out - lamina_out).max())
    back = lm.from_torch(module.state_dict(), like=(model, (4,)))
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)))
    print(f"PyTorch: keys {list(state)}")
    print(f"PyTorch: nn.Sequential outputs differ from lamina's by at most {diff:.2e}")
    print(f"PyTorch: weights back from torch are bit-identical: {same}\n")
    return diff


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="folder for mlp.safetensors and mlp.jax")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    xs, ys = make_data()
    model = lm.mlp([16, 3])
    _, params = model.init(jax.random.key(0), (4,))
    params, history = lm.fit(
        model, params, optax.adam(1e-2), (xs, ys),
        loss_fn=optax.softmax_cross_entropy_with_integer_labels,
        epochs=args.epochs, batch_size=64, key=jax.random.key(1), eval_data=(xs, ys), progress=False,
    )
    accuracy = history["eval_accuracy"][-1]
    print(f"trained {model.name} for {args.epochs} epochs: accuracy {accuracy:.3f}\n")

    info = lm.summary(model, (4,))
    print()

    path = os.path.join(args.out, "mlp.safetensors")
    lm.save(path, params, model=model,
            metadata={"epochs": str(args.epochs), "accuracy": f"{accuracy:.4f}"})
    restored = lm.load(path, like=(model, (4,)))
    exact = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(params)))
    rebuilt, _ = lm.load_model(path)  # the model too, from its recorded configuration
    meta = lm.load_metadata(path)
    names = sorted(safetensors.numpy.load_file(path))  # a plain safetensors file to any reader
    print(f"saved {path} ({os.path.getsize(path):,} bytes), tensors {names}")
    print(f"metadata: lamina {meta['lamina.version']}, epochs {meta['epochs']}, accuracy {meta['accuracy']}")
    print(f"reloaded bit for bit: {exact}; rebuilt the model: {rebuilt}, equal: {rebuilt == model}\n")

    torch_diff = exchange_with_torch(model, restored, xs[:64])

    exported_path = os.path.join(args.out, "mlp.jax")
    with open(exported_path, "wb") as f:
        f.write(lm.export(model, restored, (4,)))
    with open(exported_path, "rb") as f:
        serve = lm.load_exported(f.read())  # from here on only jax is needed
    print(f"exported the forward with its weights: {exported_path} "
          f"({os.path.getsize(exported_path):,} bytes; the weights are {info.param_bytes:,})")
    predictions = np.asarray(serve(xs[:5]))
    print(f"served a batch of 5: classes {predictions.argmax(1).tolist()} (true {ys[:5].tolist()})")
    print(f"served a batch of 1: class {int(np.asarray(serve(xs[:1])).argmax())}")
    return {
        "accuracy": accuracy,
        "params": restored,
        "path": path,
        "exported_path": exported_path,
        "predictions": predictions,
        "torch_max_diff": torch_diff,
        "summary": info,
    }


if __name__ == "__main__":
    main()
