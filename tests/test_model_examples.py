"""The ResNet and U-Net examples: their printed figures, recomputed from what they return."""

import re

import jax
import numpy as np
import pytest
from example_runner import load

import lamina as lm

pytestmark = pytest.mark.slow  # trains; the tier `pytest -m 'not slow'` leaves it out


def test_resnet_on_cifar_shaped_data_learns_and_reports_its_accuracy(capsys):
    result = load("resnet_cifar").main(["--quick", "--no-progress"])
    out = capsys.readouterr().out
    (percent,) = re.findall(r"^test accuracy: (\d+\.\d\d)% after 2 epochs", out, re.M)
    # Independent of fit's evaluation: the test split in one batch, with the running statistics.
    x_test, y_test = result["test"]
    logits, _ = lm.forward(result["model"])(result["params"], x_test, state=result["state"])
    accuracy = float(np.mean(np.asarray(logits).argmax(-1) == y_test))
    assert percent == f"{accuracy * 100:.2f}"
    assert accuracy > 0.3  # 10 classes: chance is 0.1
    # Three projection shortcuts' worth of Add: lamina layers only, so it saves and rebuilds.
    assert "Add()" in out and "Conv(32, 1)" in out


def test_unet_denoiser_predicts_the_noise_better_than_none(capsys, tmp_path):
    module = load("unet_denoiser")
    result = module.main(["--quick", "--no-progress"])
    out = capsys.readouterr().out
    for sigma in module.SIGMAS:
        inputs, noise = module.noisy(result["x_test"], np.full(len(result["x_test"]), sigma),
                                     np.random.default_rng(1))
        predicted = np.asarray(lm.forward(result["model"])(result["params"], inputs))
        mse, baseline = np.mean((predicted - noise) ** 2), np.mean(noise**2)
        assert f"sigma {sigma}: test noise MSE {mse:.4f} (predicting no noise: {baseline:.4f})" in out
        assert mse < baseline
    # Saved with its model and rebuilt: two inputs and all, from the file alone.
    lm.save(tmp_path / "unet.safetensors", result["params"], model=result["model"])
    model, params = lm.load_model(tmp_path / "unet.safetensors")
    inputs, _ = module.noisy(result["x_test"][:4], np.full(4, 0.5), np.random.default_rng(2))
    np.testing.assert_array_equal(lm.forward(model)(params, inputs),
                                  lm.forward(result["model"])(result["params"], inputs))
    assert jax.tree.structure(params) == jax.tree.structure(result["params"])
