"""The benchmark runs (a smoke run: no timing is asserted, only that it measures)."""

import json
import pathlib
import sys

import numpy as np
import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench  # noqa: E402
import impls  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("allow_rank_promotion")]


def test_quick_run_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rows = bench.main(["--quick", "--impls", "jax,lamina", "--rounds", "1", "--compile-rounds", "1",
                       "--precision", "0.5", "--max-factor", "3", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["rows"] == rows
    workloads = {r["metric"] for r in rows}
    assert workloads == {"forward b=1", "forward b=512", "adam step b=256", "per-example grads b=256", "cold compile b=1"}
    for r in rows:
        assert r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        # one round, then lamina's extra pairs: a CI needs two, the cap is three
        assert 2 <= r["blocks"] <= 3
        if r["impl"].startswith("jax"):
            assert r["ratio_to_jax"] == 1.0
        else:
            assert r["ratio_min"] <= r["ratio_q1"] <= r["ratio_to_jax"] <= r["ratio_q3"] <= r["ratio_max"]
            assert r["ratio_min"] <= r["ratio_ci_low"] <= r["ratio_to_jax"] <= r["ratio_ci_high"] <= r["ratio_max"]
    table = capsys.readouterr().out
    assert "| 784-256-256-10 | forward b=1 | lamina |" in table
    assert bench.main(["--show", str(out)]) == rows
    assert "| 784-256-256-10 | forward b=1 | " in capsys.readouterr().out


def test_paired_ratio_cancels_drift_between_pairs():
    # A machine that gets 3x slower partway through a round: "b" always costs
    # exactly twice the floor measured next to it, and the paired ratio must
    # say so whatever ran before or after the slowdown.
    clock = iter(range(10_000))
    cost = {"jax": 1.0, "b": 2.0, "c": 0.5}

    partners = []

    def measure(key, partner):
        partners.append((key, partner))
        slowdown = 3.0 if next(clock) >= 26 else 1.0
        return cost[key] * slowdown

    samples, ratios = bench.paired_rounds(measure, ["jax", "b", "c"], 12, np.random.default_rng(0))
    assert ratios == {"b": [2.0] * 12, "c": [0.5] * 12}
    assert len(samples["jax"]) == 24 and len(samples["b"]) == len(samples["c"]) == 12
    assert set(samples["b"]) == {2.0, 6.0} and set(samples["jax"]) == {1.0, 3.0}
    # each pair is two measures back to back, and each is told the other's key
    for (k1, p1), (k2, p2) in zip(partners[::2], partners[1::2]):
        assert "jax" in (k1, k2) and k1 != k2 and (p1, p2) == (k2, k1)
    # a coin decides which of the pair goes first
    firsts = [k for k, _ in partners[::2]]
    assert 0 < firsts.count("jax") < len(firsts)


@pytest.mark.parametrize("n, ranks", [(5, (1, 5)), (6, (1, 6)), (15, (4, 12)), (25, (8, 18)), (100, (40, 61))])
def test_median_ci_takes_the_order_statistics_of_the_binomial_table(n, ranks):
    # Ranks from the published table of distribution-free 95% intervals for
    # a median (under six values no interval reaches 95%: the range).
    values = np.random.default_rng(n).permutation(np.arange(1.0, n + 1))
    assert bench.median_ci(values) == ranks


def test_lamina_gets_pairs_until_its_median_is_precise():
    noise = np.random.default_rng(1)

    def measure(key, partner):
        # "lamina" costs 1.0 +- 10%, "c" exactly 2.0, against a steady floor
        return {"jax": 1.0, "c": 2.0, "lamina": 1.0 + noise.uniform(-0.1, 0.1)}[key]

    rng = np.random.default_rng(0)
    _, ratios = bench.paired_rounds(measure, ["jax", "lamina", "c"], 10, rng,
                                    refine=["lamina"], precision=0.03, max_rounds=400)
    assert len(ratios["c"]) == 10
    n = len(ratios["lamina"])
    assert 10 < n < 400
    low, high = bench.median_ci(ratios["lamina"])
    assert (high - low) / 2 <= 0.03
    low, high = bench.median_ci(ratios["lamina"][:-1])
    assert (high - low) / 2 > 0.03  # it stopped at the first precise count
    # and the cap holds when precision cannot be reached
    _, ratios = bench.paired_rounds(measure, ["jax", "lamina"], 10, rng,
                                    refine=["lamina"], precision=1e-6, max_rounds=25)
    assert len(ratios["lamina"]) == 25


@pytest.mark.parametrize("key", [k for k in impls.available()])
def test_every_installed_impl_computes_the_reference_forward(key):
    weights = impls.make_weights([12, 8, 8, 3])
    impl = impls.ALL[key][0](weights)
    xs = np.random.default_rng(1).normal(size=(5, 12)).astype(np.float32)
    got = np.asarray(impl.forward(impl.to_device(xs)), np.float64)
    np.testing.assert_allclose(got, impls.numpy_forward(weights, xs), rtol=1e-4, atol=1e-5)


def test_reference_forward_by_hand():
    weights = [(np.array([[1.0, -1.0]], np.float32), np.array([0.5], np.float32)),
               (np.array([[2.0]], np.float32), np.array([-1.0], np.float32))]
    # relu(1*3 - 1*1 + 0.5) = 2.5, then 2 * 2.5 - 1 = 4
    np.testing.assert_allclose(impls.numpy_forward(weights, np.array([[3.0, 1.0]])), [[4.0]])


def test_every_installed_impl_takes_the_same_adam_step():
    # All libraries start from the same weights and batch, so the losses of
    # two consecutive Adam steps must agree: the timed work is the same work.
    weights = impls.make_weights([12, 8, 8, 3])
    xs = np.random.default_rng(1).normal(size=(5, 12)).astype(np.float32)
    ys = np.array([0, 1, 2, 0, 1])
    losses = {}
    for key in impls.available():
        impl = impls.ALL[key][0](weights)
        impl.prepare(xs, ys)
        losses[key] = [float(impls.block(impl.train_step())) for _ in range(2)]
    logits = impls.numpy_forward(weights, xs)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    first = -logp[np.arange(5), ys].mean()  # the loss before any update
    for key, (before, after) in losses.items():
        np.testing.assert_allclose(before, first, rtol=1e-5, err_msg=key)
        np.testing.assert_allclose(after, losses["jax"][1], rtol=1e-5, err_msg=key)
        assert after < before, key


import models  # noqa: E402


def test_models_quick_run_covers_the_cnn_and_the_transformer_block(tmp_path):
    out = tmp_path / "models.json"
    rows = models.main(["--quick", "--impls", "jax,lamina", "--rounds", "1", "--compile-rounds", "0",
                        "--precision", "0.5", "--max-factor", "2", "--block-seconds", "0.01",
                        "--json", str(out)])
    assert json.loads(out.read_text())["rows"] == rows
    got = {(r["shape"].split()[0], r["metric"], r["impl"]) for r in rows}
    want = {(shape, f"{work} b={models.QUICK_BATCH[shape]}", impl)
            for shape in ("cnn", "transformer") for work in ("forward", "adam step")
            for impl in ("jax (hand-written)", "lamina")}
    assert got == want
    for r in rows:
        assert r["median_ms"] > 0 and 1 <= r["blocks"] <= 2


@pytest.mark.parametrize("shape", ["cnn", "transformer"])
def test_every_installed_model_impl_computes_the_reference_and_the_same_adam_step(shape):
    # The same weights and batch in every library: forwards match the
    # float64 NumPy reference, and two Adam steps give the floor's losses.
    weights = models.make_weights(shape)
    built = models.build(shape, models.available(), weights)
    rng = np.random.default_rng(1)
    models.check_forward(shape, built, weights, rng)
    xs, ys = models.make_batch(shape, models.QUICK_BATCH[shape], rng)
    losses = {}
    for key, impl in built.items():
        impl.prepare(xs, ys)
        losses[key] = [float(impls.block(impl.train_step())) for _ in range(2)]
    for key, (before, after) in losses.items():
        np.testing.assert_allclose([before, after], losses["jax"], rtol=1e-4, err_msg=key)
        assert after < before, key


def test_model_reference_by_hand():
    # One 2x2 max-pooled 3x3 "identity" convolution: the centre tap only.
    weights = models.make_weights("cnn")
    w = {k: np.zeros_like(v) for k, v in weights.items()}
    w["0.weight"][0, 0, 1, 1] = 1.0  # channel 0 copies input channel 0
    w["3.weight"][0, 0, 1, 1] = 1.0
    w["7.weight"][0, 0] = 1.0  # logit 0 reads flattened position (c=0, h=0, w=0)
    xs = np.zeros((1, 3, 32, 32), np.float32)
    xs[0, 0, :4, :4] = np.arange(16).reshape(4, 4)  # max over the top-left 4x4 block: 15
    np.testing.assert_allclose(models.numpy_forward("cnn", w, xs)[0], [15.0] + [0.0] * 9)
