"""Every example runs, and what it prints is checked against independent math."""

import pathlib

import numpy as np
import pytest
from example_runner import EXAMPLES, load

pytestmark = pytest.mark.slow  # the tier `pytest -m 'not slow'` leaves out


def test_every_example_has_a_test():
    sources = "".join(p.read_text() for p in pathlib.Path(__file__).parent.rglob("test_*.py"))
    for path in EXAMPLES.glob("*.py"):
        assert f'load("{path.stem}")' in sources, f"{path.name} has no test"


def test_tensors_and_matrix_algebra(capsys):
    load("tensors_and_matrix_algebra").main()
    out = capsys.readouterr().out
    assert "(3, 3) @ (3, 2) -> (3, 2)" in out
    assert "1*2 + 2*4 + 3*6 = 28.0" in out
    assert "inner dimensions 2 != 3" in out


def test_forward_propagation(tmp_path, capsys):
    module = load("forward_propagation")
    y = module.main(["--out", str(tmp_path)])
    model, params = module.build()
    W1, b1, W2, b2 = (np.asarray(a, np.float64) for a in (params[0]["W"], params[0]["b"], params[1]["W"], params[1]["b"]))
    x = np.array([0.8, 0.3, 0.9])
    ref = 1 / (1 + np.exp(-(np.maximum(W1 @ x + b1, 0) @ W2.T + b2)))
    np.testing.assert_allclose(y, ref[0], rtol=1e-5)
    png = (tmp_path / "forward_propagation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    out = capsys.readouterr().out
    assert "weighted sum z = x . W^T + b" in out and "stacked" in out
    page = (tmp_path / "forward_propagation.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "http" not in page
    assert f">{ref[0]:.4f}</text>" in page  # the output node shows the prediction
    # The docs show this example's figure and page: still what it writes.
    from test_docs import DOCS, committed_figure_size, png_size

    assert png_size(tmp_path / "forward_propagation.png") == committed_figure_size("forward_propagation.png")
    assert f">{ref[0]:.4f}</text>" in (DOCS / "figures" / "forward_propagation.html").read_text(encoding="utf-8")


def test_train_digits_quick(tmp_path, capsys):
    html = tmp_path / "digit.html"
    result = load("train_digits").main(["--quick", "--no-progress", "--out", str(tmp_path), "--html", str(html)])
    assert result["accuracy"] > 0.90
    assert len(result["history"]["train_loss"]) == 5
    png = (tmp_path / "digits_training.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from test_docs import committed_figure_size, png_size  # the docs show this example's figure

    assert png_size(tmp_path / "digits_training.png") == committed_figure_size("digits_training.png")
    out = capsys.readouterr().out
    assert "test accuracy:" in out and "predicted" in out
    page = html.read_text(encoding="utf-8")
    # 64 pixels and 256, 128 hidden units, each drawn as its first 16 units.
    assert "+48 more" in page and "+240 more" in page and "+112 more" in page
    assert "http" not in page


def test_grain_digits_quick(tmp_path, capsys):
    module = load("grain_digits")
    args = ["--quick", "--no-progress", "--checkpoints", str(tmp_path)]
    first = module.main(args)
    assert first["accuracy"] > 0.85
    again = module.main(args)  # a finished run resumes from its last checkpoint: nothing to do
    assert again["history"] == first["history"]
    np.testing.assert_array_equal(first["params"][0]["W"], again["params"][0]["W"])
    assert "test accuracy:" in capsys.readouterr().out
