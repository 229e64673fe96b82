"""The depth benchmark runs (a smoke run of --quick: no timing is asserted)."""

import json
import pathlib
import sys

import jax
import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import depth  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("allow_rank_promotion")]


# The smoke run times lamina's own implementations against the floor; the
# other libraries' agreement is checked once, below, without timing them.
OURS = ["serial", "stack", "stack+remat", depth.FLOOR_KEY]


def test_quick_run_prints_every_implementation_and_they_agree(tmp_path, capsys):
    out = tmp_path / "depth.json"
    results = depth.main(["--quick", "--impls", ",".join(OURS), "--json", str(out),
                          "--plot", str(tmp_path / "d.png")])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert (tmp_path / "d.png").stat().st_size > 0
    table = capsys.readouterr().out
    for n in (2, 4):
        for key in OURS:
            assert f"| {n} | {depth.LABELS[key]} | " in table, (n, key)
        # main raises before timing when they disagree; the errors are kept too
        agreement = results["agreement"][str(n)]
        assert set(agreement) == set(OURS)
        for errors in agreement.values():
            assert max(errors["forward"], errors["loss"], errors["loss after a step"]) < 1e-4
        for key in OURS:
            c = results["compile"][str(n)][key]
            assert 0 < c["min"] <= c["median"] <= c["max"]
        assert set(results["ratios"][str(n)]) == set(OURS) - {depth.FLOOR_KEY} | {"compile stack"}
    assert "goal: lm.stack compile at depth 4 / depth 2" in table
    memory = results["memory"]["4"]
    assert memory["stack+remat"]["peak"] <= memory["stack"]["peak"]
    assert depth.main(["--show", str(out)]) == json.loads(out.read_text())
    assert "| 4 | lm.stack | " in capsys.readouterr().out


def test_every_installed_library_computes_the_same_forward_and_adam_steps():
    w = depth.make_weights(2, 8, 16)
    built = {key: depth.CLASSES[key](2, 8, 16) for key in depth.available()}
    for impl in built.values():
        impl.load(w)
    xs = jax.random.normal(jax.random.key(0), (4, 8))
    errors = depth.check_agreement(built, {k: impl.step() for k, impl in built.items()}, w, (xs, xs))
    assert set(errors) == set(depth.available())
    for key, e in errors.items():  # check_agreement raises over 1e-4; these are its figures
        assert max(e["forward"], e["loss"], e["loss after a step"]) < 1e-4, key


def test_disagreeing_implementations_are_refused_before_timing():
    w = depth.make_weights(2, 8, 16)
    built = {}
    for key in (depth.FLOOR_KEY, "stack"):
        built[key] = depth.CLASSES[key](2, 8, 16)
        built[key].load(w)
    built["stack"].params[0][0]["scale"] = built["stack"].params[0][0]["scale"] * 1.01
    xs = jax.random.normal(jax.random.key(0), (4, 8))
    steps = {k: impl.step() for k, impl in built.items()}
    with pytest.raises(AssertionError, match="disagree.*'stack'"):
        depth.check_agreement(built, steps, w, (xs, xs))
