"""The character transformer example: it learns, it samples its own alphabet, it is causal."""

import contextlib
import io
import math

import jax
import numpy as np
import pytest
from example_runner import load

import lamina as lm

pytestmark = pytest.mark.slow  # the tier `pytest -m 'not slow'` leaves out


@pytest.fixture(scope="module")
def quick():
    """One `--quick` run shared by the tests below: `(module, result, printed text)`."""
    module = load("char_transformer")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = module.main(["--quick", "--no-progress"])
    return module, result, out.getvalue()


def test_loss_goes_down_below_a_uniform_guess(quick):
    module, result, out = quick
    vocab = result["vocab"]
    assert vocab == "".join(sorted(set(module.load_text())))
    assert result["final_loss"] < result["first_loss"]
    assert result["final_loss"] < math.log(len(vocab))
    assert result["eval_loss"] < math.log(len(vocab))
    assert "train loss" in out and "held-out loss" in out and "sample" in out


def test_held_out_loss_is_the_cross_entropy_of_the_last_tenth(quick):
    # Recomputed with NumPy from the raw logits, so the example's own split,
    # windows and loss are checked rather than reused.
    module, result, _ = quick
    text, vocab, T = module.load_text(), result["vocab"], result["window"]
    held = np.array([vocab.index(c) for c in text[int(0.9 * len(text)):]], np.int32)
    n = (len(held) - 1) // T
    xs, ys = held[: n * T].reshape(n, T), held[1 : n * T + 1].reshape(n, T)
    logits = np.asarray(lm.forward(result["model"])(result["params"], xs), np.float64)
    top = logits.max(-1, keepdims=True)
    log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, ys[..., None], axis=-1).mean()
    np.testing.assert_allclose(result["eval_loss"], nll, rtol=1e-4)


def test_sample_is_the_prompt_then_characters_of_the_text(quick):
    _, result, out = quick
    sample = result["sample"]
    assert isinstance(sample, str) and sample.startswith("The ")
    assert len(sample) == len("The ") + 40
    assert set(sample) <= set(result["vocab"])
    assert sample in out


@pytest.mark.parametrize("t", [0, 15, 30])
def test_logits_at_t_ignore_the_characters_after_t(quick, t):
    _, result, _ = quick
    model, params, T, V = result["model"], result["params"], result["window"], len(result["vocab"])
    assert t < T - 1
    rng = np.random.default_rng(t)
    x = rng.integers(0, V, size=(1, T), dtype=np.int32)
    changed = x.copy()
    # A nonzero shift mod V changes every character after t, none before.
    changed[0, t + 1 :] = (x[0, t + 1 :] + rng.integers(1, V, size=T - t - 1)) % V
    fwd = lm.forward(model)
    a, b = np.asarray(fwd(params, x))[0], np.asarray(fwd(params, changed))[0]
    np.testing.assert_allclose(a[: t + 1], b[: t + 1], rtol=0, atol=1e-6)
    # Not vacuous: the positions that do see the change move.
    assert np.abs(a[t + 1 :] - b[t + 1 :]).max() > 1e-3


def test_greedy_sampling_with_the_cache_equals_rerunning_the_model(quick):
    module, result, _ = quick
    model, params, vocab = result["model"], result["params"], result["vocab"]
    prompt, n = "The ", 12   # within one window, so both see the same positions
    ids = [vocab.index(c) for c in prompt]
    fwd = lm.forward(model)
    for _ in range(n):  # the reference: the whole text so far through the model, every step
        logits = np.asarray(fwd(params, np.array([ids], np.int32)))[0, -1]
        ids.append(int(np.argmax(logits)))
    got = module.sample(model, params, prompt, lambda s: np.array([vocab.index(c) for c in s]),
                        vocab, length=n, window=result["window"], temperature=0.0,
                        key=jax.random.key(0))
    assert got == "".join(vocab[i] for i in ids)
