"""export/load_exported: one artifact serves any batch size, needs only jax, checks inputs."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lamina as lm
from lamina import export, load_exported


@pytest.fixture
def served(key):
    model = lm.serial(lm.Dense(16, act="relu"), lm.LayerNorm(), lm.Dense(3))
    _, params = model.init(key, (5,))
    return model, params


def numpy_forward(params, xs):
    # float64 NumPy, written out independently of lamina.
    (W1, b1), ln, (W2, b2) = ((np.asarray(p["W"], np.float64), np.asarray(p["b"], np.float64)) if "W" in p else p for p in params)
    h = np.maximum(xs @ W1.T + b1, 0)
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
    h = h * np.asarray(ln["scale"]) + np.asarray(ln["offset"])
    return h @ W2.T + b2


@pytest.mark.slow
def test_one_artifact_serves_batches_of_1_7_and_256(served):
    model, params = served
    data = export(model, params, (5,))
    assert isinstance(data, bytes)
    fn = load_exported(data)
    live = lm.forward(model)
    for n in (1, 7, 256):
        xs = np.random.default_rng(n).normal(size=(n, 5)).astype(np.float32)
        ys = fn(xs)
        assert ys.shape == (n, 3)
        np.testing.assert_allclose(ys, live(params, xs), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ys, numpy_forward(params, xs.astype(np.float64)), atol=1e-5)
    assert str(fn.exported.in_avals[0].shape[0]) == "b"


@pytest.mark.slow
def test_artifact_runs_without_lamina(tmp_path, served):
    model, params = served
    xs = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    (tmp_path / "model.jax").write_bytes(export(model, params, (5,)))
    np.save(tmp_path / "xs.npy", xs)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["lamina"] = None  # any import of lamina now fails
        import jax, jax.export, numpy as np
        exported = jax.export.deserialize(bytearray(open({str(tmp_path / "model.jax")!r}, "rb").read()))
        np.save({str(tmp_path / "ys.npy")!r}, np.asarray(exported.call(np.load({str(tmp_path / "xs.npy")!r}))))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    np.testing.assert_allclose(np.load(tmp_path / "ys.npy"), numpy_forward(params, xs.astype(np.float64)), atol=1e-5)


def test_fixed_batch(served):
    model, params = served
    fn = load_exported(export(model, params, (5,), batch=4))
    xs = np.ones((4, 5), np.float64)  # float64 NumPy input is cast to float32
    np.testing.assert_allclose(fn(xs), numpy_forward(params, xs), atol=1e-5)
    with pytest.raises(ValueError, match=r"exported forward: expected xs of shape \(4, 5\) \(float32\), got shape \(3, 5\)"):
        fn(np.ones((3, 5), np.float32))


def test_wrong_inputs_are_refused_clearly(served):
    model, params = served
    fn = load_exported(export(model, params, (5,)))
    with pytest.raises(ValueError, match=r"^exported forward: expected xs of shape \(N, 5\) \(float32\), got shape \(7, 4\)$"):
        fn(np.ones((7, 4), np.float32))
    with pytest.raises(ValueError, match=r"expected xs of shape \(N, 5\) \(float32\), got shape \(5,\)"):
        fn(jnp.ones(5))
    with pytest.raises(TypeError, match=r"exported forward: expected xs of dtype float32, got int32"):
        fn(np.ones((2, 5), np.int32))


def test_artifact_size_is_about_the_weights(key):
    model = lm.mlp([256, 10])
    _, params = model.init(key, (784,))
    param_bytes = 4 * (784 * 256 + 256 + 256 * 10 + 10)
    size = len(export(model, params, (784,)))
    assert param_bytes < size < param_bytes + 64 * 1024


def test_export_argument_errors(served):
    model, params = served
    with pytest.raises(ValueError, match=r'export: batch must be "dynamic" or an int >= 1, got 0'):
        export(model, params, (5,), batch=0)
    with pytest.raises(ValueError, match=r'batch must be "dynamic" or an int >= 1, got \'any\''):
        export(model, params, (5,), batch="any")
    with pytest.raises(ValueError, match=r"serial\[0\] Dense\(16, relu\): params do not fit the model at '0.W': expected shape \(16, 6\), got \(16, 5\)"):
        export(model, params, (6,))
    with pytest.raises(TypeError, match=r"export: expected a lamina Layer"):
        export(params, model, (5,))


def test_load_exported_refuses_other_data():
    with pytest.raises(ValueError, match=r"load_exported: not a jax.export artifact \(70 bytes"):
        load_exported(b"not an artifact" * 4 + b"0123456789")
    with pytest.raises(TypeError, match=r"load_exported: expected the bytes export\(\) returned, got str"):
        load_exported("model.jax")
    two_inputs = jax.export.export(jax.jit(lambda a, b: a + b))(
        jax.ShapeDtypeStruct((2,), jnp.float32), jax.ShapeDtypeStruct((2,), jnp.float32)
    )
    with pytest.raises(ValueError, match=r"load_exported: expected an artifact of one batched input"):
        load_exported(two_inputs.serialize())
