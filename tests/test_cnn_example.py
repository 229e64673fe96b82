"""The CNN digits example: its printed accuracy, recomputed from what it returns."""

import re

import numpy as np
import pytest
from example_runner import load

import lamina as lm

pytestmark = pytest.mark.slow  # the tier `pytest -m 'not slow'` leaves out

LINE = re.compile(r"^test accuracy: (\d{1,3}\.\d\d)% after (\d+) epochs in (\d+\.\d) s$", re.M)


def test_cnn_digits_quick(capsys):
    module = load("cnn_digits")
    result = module.main(["--quick", "--no-progress"])
    out = capsys.readouterr().out

    lines = LINE.findall(out)
    assert len(lines) == 1, out
    percent, epochs, seconds = lines[0]
    assert int(epochs) == result["epochs"] == len(result["history"]["train_loss"]) == 3
    assert seconds == f"{result['seconds']:.1f}"
    assert result["accuracy"] > 0.9

    # Independent of lm.fit's evaluation: the test split predicted in one
    # batch with the returned params and BatchNorm's running statistics.
    _, (x_test, y_test) = module.load_data()
    logits, _ = lm.forward(result["model"])(
        result["params"], x_test.reshape(-1, 1, 8, 8), state=result["state"]
    )
    correct = np.asarray(logits).argmax(-1) == y_test
    assert percent == f"{np.mean(correct) * 100:.2f}"
    # lm.fit reports a float32 mean; compare it as a count of right answers.
    assert round(result["accuracy"] * len(y_test)) == correct.sum()
    # 1347 training images in batches of 32: 42 whole batches an epoch, each
    # one BatchNorm update (the partial batch is dropped).
    tracked = [s["num_batches_tracked"] for s in result["state"] if "num_batches_tracked" in s]
    assert tracked and all(int(n) == 3 * 42 for n in tracked)
    assert "GlobalAvgPool()" in out and "state (not trained)" in out
