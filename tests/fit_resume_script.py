"""One fit with checkpoints, run as a process by tests/test_fit_resume.py, which kills it.

    python tests/fit_resume_script.py CHECKPOINT_DIR|- OUT

Writes the final params (OUT.npz) and history (OUT.json), each by a rename
so a killed run leaves none. With `-` it trains without checkpoints. It
prints the step fit resumed from, read from fit's own restore.
"""

import json
import os
import sys


def main(checkpoint_dir, out):
    import jax
    import numpy as np
    import optax

    import lamina as lm
    from lamina._src.train import resume

    restore = resume.Checkpoints.resume

    def reporting(self, run, resume_flag):
        restored = restore(self, run, resume_flag)
        print("started" if restored is run else f"resumed from step {restored.step}", flush=True)
        return restored

    resume.Checkpoints.resume = reporting
    model = lm.serial(lm.Dense(32, act="relu"), lm.Dropout(0.1), lm.Dense(3))
    _, params = model.init(jax.random.key(0), (8,))
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(300, 8)).astype(np.float32)  # 300 = 18 * 16 + 12: a short last batch
    ys = (xs[:, 0] + xs[:, 1] > 0).astype(np.int32) + (xs[:, 2] > 1)
    more = {} if checkpoint_dir == "-" else dict(checkpoint_dir=checkpoint_dir, checkpoint_every=3)
    params, history = lm.fit(
        model, params, optax.adam(1e-2), (xs, ys),
        loss_fn=optax.softmax_cross_entropy_with_integer_labels, epochs=6, batch_size=16,
        key=jax.random.key(1), eval_data=(xs[:64], ys[:64]), progress=False, **more)
    np.savez(out + ".part.npz", *[np.asarray(leaf) for leaf in jax.tree.leaves(params)])
    os.replace(out + ".part.npz", out + ".npz")
    with open(out + ".part", "w") as f:
        json.dump(history, f)
    os.replace(out + ".part", out + ".json")


if __name__ == "__main__":
    main(*sys.argv[1:])
