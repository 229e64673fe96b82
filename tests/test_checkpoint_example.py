"""The checkpoints-and-interop example, checked against NumPy and the files it wrote."""

import sys

import jax
import numpy as np
import pytest
import safetensors.numpy
from example_runner import load

pytestmark = pytest.mark.slow  # the tier `pytest -m 'not slow'` leaves out


def numpy_mlp(tensors, xs):
    h = np.maximum(xs @ tensors["0.W"].T.astype(np.float64) + tensors["0.b"], 0)
    return h @ tensors["1.W"].T.astype(np.float64) + tensors["1.b"]


def test_checkpoints_and_interop(tmp_path, capsys):
    pytest.importorskip("torch")  # in the test extra; the test below covers a machine without it
    module = load("checkpoints_and_interop")
    result = module.main(["--out", str(tmp_path), "--epochs", "5"])
    out = capsys.readouterr().out
    xs, ys = module.make_data()

    tensors = safetensors.numpy.load_file(tmp_path / "mlp.safetensors")
    assert sorted(tensors) == ["0.W", "0.b", "1.W", "1.b"]
    assert tensors["0.W"].shape == (16, 4) and tensors["1.W"].shape == (3, 16)
    reference = numpy_mlp(tensors, xs.astype(np.float64))
    np.testing.assert_allclose(result["predictions"], reference[:5], atol=1e-5)
    assert abs(result["accuracy"] - np.mean(reference.argmax(1) == ys)) <= 1 / len(ys)

    exported = jax.export.deserialize(bytearray((tmp_path / "mlp.jax").read_bytes()))
    np.testing.assert_allclose(np.asarray(exported.call(xs[:9])), reference[:9], atol=1e-5)

    # 4 -> 16 -> 3: params 4*16+16 and 16*3+3; FLOPs 2*4*16+16 and 2*16*3+3.
    assert result["summary"].params == 131 and result["summary"].flops == 144 + 99
    assert "total                       (3,)       131    243" in out
    assert "parameter memory: 524 bytes" in out
    assert "tensors ['0.W', '0.b', '1.W', '1.b']" in out
    assert "reloaded bit for bit: True" in out
    assert "rebuilt the model: serial(Dense(16, act='relu'), Dense(3)), equal: True" in out
    assert "epochs 5" in out
    assert f"classes {reference[:5].argmax(1).tolist()}" in out
    assert result["torch_max_diff"] is not None and result["torch_max_diff"] < 1e-5
    assert "PyTorch: keys ['0.weight', '0.bias', '2.weight', '2.bias']" in out
    assert "bit-identical: True" in out


def test_checkpoints_and_interop_without_torch(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    result = load("checkpoints_and_interop").main(["--out", str(tmp_path), "--epochs", "1"])
    out = capsys.readouterr().out
    assert result["torch_max_diff"] is None
    assert "PyTorch is not installed: skipping the exchange" in out
    assert "served a batch of 1" in out
