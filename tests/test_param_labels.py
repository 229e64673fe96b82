"""param_labels: labels by regular expressions over param paths, for optax.multi_transform and masks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lamina as lm

xent = optax.softmax_cross_entropy_with_integer_labels


@pytest.fixture
def params():
    model = lm.serial(lm.Dense(8, act="relu"), lm.Dropout(0.1), lm.Dense(4), lm.LayerNorm())
    return model, model.init(jax.random.key(0), (3,))[1]


def test_labels_match_hand_built_masks(params):
    _, params = params
    labels = lm.param_labels(params, {r"0\..*": "frozen", r"2\.W": "decay"}, "plain")
    assert labels == ({"W": "frozen", "b": "frozen"}, (), {"W": "decay", "b": "plain"},
                      {"scale": "plain", "offset": "plain"})
    mask = lm.param_labels(params, {r".*\.W": True}, False)
    assert mask == ({"W": True, "b": False}, (), {"W": True, "b": False},
                    {"scale": False, "offset": False})
    assert jax.tree.structure(mask) == jax.tree.structure(jax.tree.map(lambda _: 0, params))


@pytest.mark.slow
def test_labels_freeze_a_layer_and_decay_only_weights(params):
    model, params = params
    labels = lm.param_labels(params, {r"0\..*": "frozen"}, "train")
    decay = lm.param_labels(params, {r".*\.W": True}, False)
    opt = optax.multi_transform(
        {"frozen": optax.set_to_zero(),
         "train": optax.chain(optax.add_decayed_weights(0.5, mask=decay), optax.sgd(0.1))},
        labels)
    opt_state = opt.init(params)
    step = lm.train_step(model, xent, opt, donate=False)
    xs, ys = jnp.ones((2, 3)), jnp.array([0, 1])
    new, _, _ = step(params, opt_state, (xs, ys))
    np.testing.assert_array_equal(new[0]["W"], params[0]["W"])  # frozen
    np.testing.assert_array_equal(new[0]["b"], params[0]["b"])
    # With a zero loss gradient, only decay moves a weight: W -> W - 0.1 * 0.5 * W.
    zero = lm.train_step(model, lambda out, y: 0.0 * jnp.sum(out), opt, donate=False)
    new, _, _ = zero(params, opt_state, (xs, ys))
    np.testing.assert_allclose(new[2]["W"], 0.95 * params[2]["W"], rtol=1e-6)
    np.testing.assert_array_equal(new[2]["b"], params[2]["b"])
    np.testing.assert_array_equal(new[3]["scale"], params[3]["scale"])


@pytest.mark.parametrize(
    "rules, pattern",
    [
        ({r"5\..*": "x"}, r"param_labels: rule '5\\\\\.\.\*' matches no params path; the paths are '0\.W', '0\.b', '2\.W'"),
        ({r".*W": "a", r"0\..*": "b"}, r"param_labels: rules '\.\*W' and '0\\\\\.\.\*' both match '0\.W'"),
        ({r"W": True}, r"rule 'W' matches no params path.*matched whole, as re\.fullmatch"),
        ({r"(": "x"}, r"param_labels: rule '\(' is not a regular expression"),
    ],
)
def test_unmatched_ambiguous_or_bad_rules_are_named(params, rules, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        lm.param_labels(params[1], rules, "default")
    assert isinstance(info.value, lm.LaminaError)
