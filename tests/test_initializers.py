"""Initializers read fans from the (out, in, *kernel) axes, and are values.

Variances are checked against closed forms, layouts against NumPy transposes,
and draws against the JAX calls lamina made before initializers were values.
"""

import dataclasses
import functools
import json
import math
import pickle

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import lamina as lm
from lamina import initializers as init

OUT, IN = 512, 128  # non-square, so swapping the axes changes every variance
C_OUT, C_IN, KH, KW = 32, 16, 3, 3  # conv weight: fan_in 144, fan_out 288
FAN_IN, FAN_OUT = C_IN * KH * KW, C_OUT * KH * KW

# (name, factory, variance on (OUT, IN), variance on the conv shape, distribution)
CASES = [
    ("torch_linear", init.torch_linear, 1 / (3 * IN), 1 / (3 * FAN_IN), "uniform"),
    ("glorot_uniform", init.glorot_uniform, 2 / (IN + OUT), 2 / (FAN_IN + FAN_OUT), "uniform"),
    ("xavier_uniform", init.xavier_uniform, 2 / (IN + OUT), 2 / (FAN_IN + FAN_OUT), "uniform"),
    ("glorot_normal", init.glorot_normal, 2 / (IN + OUT), 2 / (FAN_IN + FAN_OUT), "normal"),
    ("xavier_normal", init.xavier_normal, 2 / (IN + OUT), 2 / (FAN_IN + FAN_OUT), "normal"),
    ("he_uniform", init.he_uniform, 2 / IN, 2 / FAN_IN, "uniform"),
    ("kaiming_uniform", init.kaiming_uniform, 2 / IN, 2 / FAN_IN, "uniform"),
    ("he_normal", init.he_normal, 2 / IN, 2 / FAN_IN, "normal"),
    ("kaiming_normal", init.kaiming_normal, 2 / IN, 2 / FAN_IN, "normal"),
    ("lecun_uniform", init.lecun_uniform, 1 / IN, 1 / FAN_IN, "uniform"),
    ("lecun_normal", init.lecun_normal, 1 / IN, 1 / FAN_IN, "normal"),
    ("fan_out_truncated", lambda: init.VarianceScaling(3.0, "fan_out", "truncated_normal"),
     3 / OUT, 3 / FAN_OUT, "truncated_normal"),
    ("normal", lambda: init.normal(0.02), 0.02**2, 0.02**2, "normal"),
    ("normal_default", init.normal, 0.01**2, 0.01**2, "normal"),
    ("uniform", lambda: init.uniform(0.1), 0.1**2 / 3, 0.1**2 / 3, "uniform"),
    ("torch_bias", lambda: init.torch_bias(16), 0.25**2 / 3, 0.25**2 / 3, "uniform"),
]


def _check_distribution(W, variance, distribution, rtol, mean_sds):
    W = np.asarray(W, np.float64)
    sd = math.sqrt(variance)
    np.testing.assert_allclose(W.var(), variance, rtol=rtol)
    assert abs(W.mean()) < mean_sds * sd / math.sqrt(W.size)
    if distribution == "uniform":
        bound = math.sqrt(3 * variance)
        assert np.abs(W).max() <= bound * (1 + 1e-6)
        assert np.abs(W).max() > 0.99 * bound
    elif distribution == "truncated_normal":
        assert np.abs(W).max() <= 2 * sd / 0.87962566103423978 * (1 + 1e-6)
    else:  # a plain normal has tails past 3 sd in a sample this size
        assert np.abs(W).max() > 3 * sd


@pytest.mark.parametrize("name, make, variance, _, distribution", CASES, ids=[c[0] for c in CASES])
def test_variance_on_dense_shape_matches_closed_form(name, make, variance, _, distribution):
    W = make()(jax.random.key(3), (OUT, IN), jnp.float32)
    assert W.shape == (OUT, IN) and W.dtype == jnp.float32
    _check_distribution(W, variance, distribution, rtol=0.04, mean_sds=4.5)


@pytest.mark.parametrize("name, make, _, variance, distribution", CASES, ids=[c[0] for c in CASES])
def test_variance_on_conv_shape_matches_closed_form(name, make, _, variance, distribution):
    # 4608 draws: the sample variance of a normal is within 8% at about 4 sd.
    W = make()(jax.random.key(4), (C_OUT, C_IN, KH, KW), jnp.float32)
    assert W.shape == (C_OUT, C_IN, KH, KW)
    _check_distribution(W, variance, distribution, rtol=0.08, mean_sds=4.5)


@pytest.mark.parametrize(
    "make, scale, mode, distribution",
    [
        (init.torch_linear, 1 / 3, "fan_in", "uniform"),
        (init.glorot_uniform, 1.0, "fan_avg", "uniform"),
        (init.glorot_normal, 1.0, "fan_avg", "normal"),
        (init.he_uniform, 2.0, "fan_in", "uniform"),
        (init.he_normal, 2.0, "fan_in", "normal"),
        (init.lecun_uniform, 1.0, "fan_in", "uniform"),
        (init.lecun_normal, 1.0, "fan_in", "normal"),
    ],
)
@pytest.mark.slow
def test_same_distribution_as_jax_on_out_in_matrices(make, scale, mode, distribution):
    # JAX's own initializer reading the (out, in) layout: in_axis=-1, out_axis=-2. lamina
    # draws without compiling per shape, so the values differ: the distributions must not
    # (two-sample Kolmogorov-Smirnov over 20 matrices each).
    ref = jax.nn.initializers.variance_scaling(scale, mode, distribution, in_axis=-1, out_axis=-2)
    ours = np.concatenate([np.ravel(make()(jax.random.key(k), (OUT, IN))) for k in range(20)])
    theirs = np.concatenate([np.ravel(ref(jax.random.key(k), (OUT, IN), jnp.float32)) for k in range(20)])
    assert stats.ks_2samp(ours, theirs).pvalue > 1e-3


def test_same_distribution_as_jax_for_uniform_and_normal():
    for ours, theirs in ((init.uniform(0.3), lambda k: jax.random.uniform(k, (50, 40), jnp.float32, -0.3, 0.3)),
                         (init.normal(0.02), lambda k: jax.nn.initializers.normal(0.02)(k, (50, 40)))):
        a = np.ravel(ours(jax.random.key(12), (50, 40)))
        b = np.ravel(theirs(jax.random.key(12)))
        assert stats.ks_2samp(a, b).pvalue > 1e-3


def test_constants():
    np.testing.assert_array_equal(init.zeros(jax.random.key(0), (2, 3)), np.zeros((2, 3)))
    np.testing.assert_array_equal(init.ones(jax.random.key(0), (2,)), np.ones(2))
    np.testing.assert_array_equal(init.constant(-1.5)(jax.random.key(0), (2,)), np.full(2, -1.5))
    assert init.zeros == init.Constant(0.0) and init.ones == init.Constant(1.0)


def test_torch_bias_bound():
    b = np.asarray(init.torch_bias(16)(jax.random.key(0), (4000,)))
    assert np.abs(b).max() <= 0.25 and np.abs(b).max() > 0.249
    np.testing.assert_allclose(b.var(), 0.25**2 / 3, rtol=0.06)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize(
    "make", [init.he_normal, init.torch_linear, lambda: init.uniform(0.1), init.normal,
             lambda: init.ones], ids=["he_normal", "torch_linear", "uniform", "normal", "ones"]
)
def test_dtype_is_respected(make, dtype):
    assert make()(jax.random.key(0), (3, 2), dtype).dtype == dtype
    assert init.init_weight(make(), jax.random.key(0), (3, 2), dtype).dtype == dtype


def test_dense_uses_fan_in_of_in_axis(key):
    # He init on a (out=512, in=8) layer: variance 2/8, not 2/512.
    _, params = lm.Dense(512, w_init=init.he_normal()).init(key, (8,))
    np.testing.assert_allclose(np.var(np.asarray(params["W"])), 2 / 8, rtol=0.05)


def test_init_weight_gives_jax_he_normal_its_fan_in():
    W = init.init_weight(jax.nn.initializers.he_normal(), jax.random.key(0), (1000, 10), jnp.float32)
    assert W.shape == (1000, 10)
    np.testing.assert_allclose(np.var(np.asarray(W, np.float64)), 2 / 10, rtol=0.05)
    np.testing.assert_allclose(np.std(np.asarray(W, np.float64)), math.sqrt(0.2), rtol=0.025)


def test_init_weight_gives_jax_he_normal_its_fan_in_on_conv_shape():
    # 1152 draws: rtol 0.15 is about 3.5 sd of the sample variance.
    W = init.init_weight(jax.nn.initializers.he_normal(), jax.random.key(1), (16, 8, 3, 3), jnp.float32)
    assert W.shape == (16, 8, 3, 3)
    np.testing.assert_allclose(np.var(np.asarray(W, np.float64)), 2 / (8 * 9), rtol=0.15)


def test_init_weight_gives_jax_fan_out_modes_the_out_axis():
    fan_out = jax.nn.initializers.variance_scaling(1.0, "fan_out", "normal")
    W = init.init_weight(fan_out, jax.random.key(2), (OUT, IN), jnp.float32)
    np.testing.assert_allclose(np.var(np.asarray(W, np.float64)), 1 / OUT, rtol=0.04)
    W = init.init_weight(fan_out, jax.random.key(3), (C_OUT, C_IN, KH, KW), jnp.float32)
    np.testing.assert_allclose(np.var(np.asarray(W, np.float64)), 1 / FAN_OUT, rtol=0.08)


@pytest.mark.parametrize(
    "shape, variance", [((1000, 10), 2 / 10), ((64, 8, 3, 3), 2 / 72)], ids=["dense", "conv"]
)
def test_lamina_he_normal_has_the_same_variance_through_init_weight(shape, variance):
    W = init.init_weight(init.he_normal(), jax.random.key(5), shape, jnp.float32)
    assert W.shape == shape
    # 4608 draws estimate the variance to +-2% (one sd): 5 sd.
    np.testing.assert_allclose(np.var(np.asarray(W, np.float64)), variance, rtol=0.1)
    # A lamina initializer is called with the torch shape: the very same draws.
    np.testing.assert_array_equal(W, init.he_normal()(jax.random.key(5), shape, jnp.float32))


def _numbered(key, shape, dtype=jnp.float32):
    """A foreign initializer whose entries say where they were: 0, 1, 2, ..."""
    return jnp.arange(math.prod(shape), dtype=dtype).reshape(shape)


@pytest.mark.parametrize("shape", [(3, 2), (4, 3, 2), (5, 4, 3, 2), (2, 3, 4, 5, 6)])
def test_init_weight_transposes_flax_layout_to_torch_layout(shape):
    out, in_, kernel = shape[0], shape[1], shape[2:]
    flax = np.arange(math.prod(shape), dtype=np.float32).reshape(kernel + (in_, out))
    # (*kernel, in, out) -> (out, in, *kernel), written with NumPy's moveaxis.
    expected = np.moveaxis(np.moveaxis(flax, -1, 0), -1, 1)
    W = init.init_weight(_numbered, jax.random.key(0), shape, jnp.float32)
    assert W.shape == shape
    np.testing.assert_array_equal(W, expected)
    if len(shape) == 2:
        np.testing.assert_array_equal(W, flax.T)


@dataclasses.dataclass(frozen=True)
class _NumberedTorch(init.Initializer):
    """A user's own lamina initializer: gets the torch shape, untransposed."""

    def __call__(self, key, shape, dtype=jnp.float32):
        return _numbered(key, shape, dtype)


def test_init_weight_calls_lamina_initializers_with_the_torch_shape():
    W = init.init_weight(_NumberedTorch(), jax.random.key(0), (4, 3, 2), jnp.float32)
    np.testing.assert_array_equal(W, np.arange(24, dtype=np.float32).reshape(4, 3, 2))


@pytest.mark.parametrize("initializer", [_numbered, _NumberedTorch(), init.uniform(1.0)])
def test_init_weight_passes_a_bias_shape_unchanged(initializer):
    asked = []

    def spy(key, shape, dtype=jnp.float32):
        asked.append(tuple(shape))
        return initializer(key, shape, dtype)

    b = init.init_weight(initializer, jax.random.key(0), (7,), jnp.float32)
    assert b.shape == (7,)
    init.init_weight(spy, jax.random.key(0), (7,), jnp.float32)
    assert asked == [(7,)]


def test_init_weight_rejects_a_non_callable():
    with pytest.raises(TypeError, match=r"lm\.initializers.*must be callable.*got str 'he_normal'"):
        init.init_weight("he_normal", jax.random.key(0), (3, 2), jnp.float32)


def test_init_weight_rejects_a_wrong_shape():
    def wrong(key, shape, dtype=jnp.float32):
        return jnp.zeros((2, 2), dtype)

    with pytest.raises(ValueError, match=r"asked for shape \(2, 3\).*of \(3, 2\).*shape \(2, 2\)"):
        init.init_weight(wrong, jax.random.key(0), (3, 2), jnp.float32)


def test_init_weight_names_a_factory_passed_uncalled():
    with pytest.raises(TypeError, match=r"returned function, not an array.*he_normal\(\)"):
        init.init_weight(jax.nn.initializers.he_normal, jax.random.key(0), (3, 2), jnp.float32)


def test_variance_scaling_rejects_a_bias_shape():
    with pytest.raises(ValueError, match=r"\(out, in\) shape.*got shape \(3,\)"):
        init.he_normal()(jax.random.key(0), (3,))


VALUES = [
    ("torch_linear", init.torch_linear, "VarianceScaling(scale=0.3333333333333333, mode='fan_in', distribution='uniform')"),
    ("torch_bias", lambda: init.torch_bias(16), "Uniform(bound=0.25)"),
    ("uniform", lambda: init.uniform(0.5), "Uniform(bound=0.5)"),
    ("glorot_uniform", init.glorot_uniform, "VarianceScaling(scale=1.0, mode='fan_avg', distribution='uniform')"),
    ("xavier_uniform", init.xavier_uniform, "VarianceScaling(scale=1.0, mode='fan_avg', distribution='uniform')"),
    ("glorot_normal", init.glorot_normal, "VarianceScaling(scale=1.0, mode='fan_avg', distribution='normal')"),
    ("xavier_normal", init.xavier_normal, "VarianceScaling(scale=1.0, mode='fan_avg', distribution='normal')"),
    ("he_uniform", init.he_uniform, "VarianceScaling(scale=2.0, mode='fan_in', distribution='uniform')"),
    ("kaiming_uniform", init.kaiming_uniform, "VarianceScaling(scale=2.0, mode='fan_in', distribution='uniform')"),
    ("he_normal", init.he_normal, "VarianceScaling(scale=2.0, mode='fan_in', distribution='normal')"),
    ("kaiming_normal", init.kaiming_normal, "VarianceScaling(scale=2.0, mode='fan_in', distribution='normal')"),
    ("lecun_uniform", init.lecun_uniform, "VarianceScaling(scale=1.0, mode='fan_in', distribution='uniform')"),
    ("lecun_normal", init.lecun_normal, "VarianceScaling(scale=1.0, mode='fan_in', distribution='normal')"),
    ("normal", init.normal, "Normal(stddev=0.01)"),
    ("constant", lambda: init.constant(-1.5), "Constant(value=-1.5)"),
    ("zeros", lambda: init.zeros, "Constant(value=0.0)"),
    ("ones", lambda: init.ones, "Constant(value=1.0)"),
    ("truncated", lambda: init.VarianceScaling(3, "fan_out", "truncated_normal"),
     "VarianceScaling(scale=3.0, mode='fan_out', distribution='truncated_normal')"),
]
VALUE_IDS = [v[0] for v in VALUES]


@pytest.mark.parametrize("name, make, text", VALUES, ids=VALUE_IDS)
def test_equal_configuration_is_equal_with_equal_hash(name, make, text):
    a, b = make(), make()
    assert isinstance(a, init.Initializer)
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1


@pytest.mark.parametrize("name, make, text", VALUES, ids=VALUE_IDS)
def test_repr_shows_the_configuration(name, make, text):
    assert repr(make()) == text


@pytest.mark.parametrize("name, make, text", VALUES, ids=VALUE_IDS)
def test_pickle_round_trips_to_an_equal_value(name, make, text):
    a = make()
    b = pickle.loads(pickle.dumps(a))
    assert b == a and hash(b) == hash(a) and type(b) is type(a)
    np.testing.assert_array_equal(b(jax.random.key(1), (6, 4)), a(jax.random.key(1), (6, 4)))


@pytest.mark.parametrize("name, make, text", VALUES, ids=VALUE_IDS)
def test_rebuilds_from_json_fields(name, make, text):
    a = make()
    fields = {f.name: getattr(a, f.name) for f in dataclasses.fields(a)}
    assert fields and all(type(v) in (int, float, str, bool) for v in fields.values())
    assert type(a).__name__ in lm.initializers.__all__
    rebuilt = getattr(lm.initializers, type(a).__name__)(**json.loads(json.dumps(fields)))
    assert rebuilt == a and hash(rebuilt) == hash(a)


@pytest.mark.parametrize("name, make, text", VALUES, ids=VALUE_IDS)
def test_is_frozen(name, make, text):
    a = make()
    field = dataclasses.fields(a)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(a, field, 3.0)


def test_different_configurations_differ():
    values = [
        init.he_normal(), init.he_uniform(), init.lecun_normal(), init.glorot_normal(),
        init.torch_linear(), init.normal(0.01), init.uniform(0.01), init.constant(0.01),
        init.zeros, init.ones, init.Normal(0.0), init.Uniform(0.0),
    ]
    assert len(set(values)) == len(values)


def test_numbers_are_stored_as_floats():
    assert init.VarianceScaling(2, "fan_in", "normal") == init.he_normal()
    assert type(init.VarianceScaling(2, "fan_in", "normal").scale) is float
    assert type(init.constant(np.float32(0.5)).value) is float
    assert repr(init.constant(3)) == "Constant(value=3.0)"


def test_equal_initializers_share_one_compile():
    # A value can be a static argument of jit: equal ones hit the same cache entry.
    chex.clear_trace_counter()

    @functools.partial(jax.jit, static_argnums=0)
    @chex.assert_max_traces(n=1)
    def make(initializer, key):
        return initializer(key, (4, 3))

    key = jax.random.key(0)
    first = make(init.he_normal(), key)
    np.testing.assert_array_equal(make(init.he_normal(), key), first)


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda: init.VarianceScaling(0.0, "fan_in", "normal"), ValueError, ["scale", "> 0", "0.0"]),
        (lambda: init.VarianceScaling(float("nan"), "fan_in", "normal"), ValueError, ["scale", "finite", "nan"]),
        (lambda: init.VarianceScaling("2", "fan_in", "normal"), TypeError, ["scale", "real number", "str '2'"]),
        (lambda: init.VarianceScaling(True, "fan_in", "normal"), TypeError, ["scale", "real number", "bool True"]),
        (lambda: init.VarianceScaling(1.0, "fan_inn", "normal"), ValueError, ["mode", "'fan_avg'", "'fan_inn'"]),
        (lambda: init.VarianceScaling(1.0, "fan_in", "gauss"), ValueError, ["distribution", "'uniform'", "'gauss'"]),
        (lambda: init.uniform(-0.1), ValueError, ["Uniform", "bound", ">= 0", "-0.1"]),
        (lambda: init.normal(float("inf")), ValueError, ["Normal", "stddev", "finite", "inf"]),
        (lambda: init.constant(np.ones(3)), TypeError, ["Constant", "value", "real number", "ndarray"]),
        (lambda: init.torch_bias(0), ValueError, ["torch_bias", "fan_in", ">= 1", "got 0"]),
        (lambda: init.torch_bias(2.0), TypeError, ["torch_bias", "fan_in", "int", "float 2.0"]),
    ],
)
def test_bad_configuration_is_rejected(make, error, words):
    with pytest.raises(error) as info:
        make()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_public_names_are_pinned():
    assert sorted(lm.initializers.__all__) == sorted([
        "Constant", "Initializer", "Normal", "Uniform", "VarianceScaling",
        "constant", "glorot_normal", "glorot_uniform", "he_normal", "he_uniform",
        "init_weight", "kaiming_normal", "kaiming_uniform", "lecun_normal", "lecun_uniform",
        "normal", "ones", "torch_bias", "torch_linear", "uniform", "xavier_normal",
        "xavier_uniform", "zeros",
    ])
    for name in lm.initializers.__all__:
        assert hasattr(lm.initializers, name), name


# --- init without a compile per shape -------------------------------------------------

def _compiles(fn):
    """How many XLA programs `fn()` compiles (jax.monitoring's compile events)."""
    events = []

    def listen(name, secs, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        fn()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return len(events)


@pytest.mark.slow
def test_init_of_many_distinct_shapes_compiles_about_once():
    lm.serial(lm.Dense(3), lm.LayerNorm(), lm.Conv(2, 3)).init(jax.random.key(1), (1, 5))  # warm
    widths = [7 + 5 * i for i in range(24)]
    model = lm.serial(*(lm.Dense(w, act="relu") for w in widths), lm.LayerNorm(),
                      lm.Reshape((1, -1)), lm.Conv(3, 3), lm.Flatten(), lm.Embedding(11, 5))
    # Before: one random kernel per distinct shape, 50 compiles here. Now only
    # splitting a key into a new number of parts compiles (split and unstack,
    # for serial's 29 children and Embedding's one param).
    n = _compiles(lambda: jax.block_until_ready(model.init(jax.random.key(0), (8,))))
    assert n <= 4, n


@pytest.mark.parametrize("init, reference", [
    (lm.initializers.he_normal(), lambda fan_in, fan_out: stats.norm(0, np.sqrt(2 / fan_in))),
    (lm.initializers.glorot_uniform(),
     lambda fan_in, fan_out: stats.uniform(-np.sqrt(6 / (fan_in + fan_out)), 2 * np.sqrt(6 / (fan_in + fan_out)))),
    (lm.initializers.torch_linear(),
     lambda fan_in, fan_out: stats.uniform(-1 / np.sqrt(fan_in), 2 / np.sqrt(fan_in))),
    (lm.initializers.VarianceScaling(1.0, "fan_out", "truncated_normal"),
     lambda fan_in, fan_out: stats.truncnorm(-2, 2, scale=np.sqrt(1 / fan_out) / 0.87962566103423978)),
    (lm.initializers.Normal(0.02), lambda fan_in, fan_out: stats.norm(0, 0.02)),
    (lm.initializers.Uniform(0.3), lambda fan_in, fan_out: stats.uniform(-0.3, 0.6)),
])
def test_drawn_from_the_distribution_they_name(init, reference):
    shape = (120, 30, 3)  # (out, in, kernel): fan_in 90, fan_out 360
    values = np.asarray(init(jax.random.key(3), shape), np.float64).ravel()
    assert values.shape == (120 * 30 * 3,)
    # Kolmogorov-Smirnov against scipy's distribution: a wrong scale or shape fails by far.
    assert stats.kstest(values, reference(90, 360).cdf).pvalue > 1e-3
    # Different keys, different draws; the same key, the same draws.
    again = np.asarray(init(jax.random.key(3), shape)).ravel()
    other = np.asarray(init(jax.random.key(4), shape)).ravel()
    np.testing.assert_array_equal(again, values.astype(np.float32))
    assert np.abs(other - values).max() > 0


def test_traced_and_eager_draws_follow_the_same_distribution():
    init = lm.initializers.he_uniform()
    eager = np.asarray(init(jax.random.key(0), (200, 50))).ravel()
    traced = np.asarray(jax.jit(lambda k: init(k, (200, 50)))(jax.random.key(0))).ravel()
    assert stats.ks_2samp(eager, traced).pvalue > 1e-3
    for dtype in (jnp.bfloat16, jnp.float16):
        assert init(jax.random.key(0), (4, 3), dtype).dtype == dtype
