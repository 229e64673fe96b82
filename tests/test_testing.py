"""lm.testing.check_layer: every lamina layer passes, and each broken layer is caught.

Each broken layer below breaks exactly one property in a way users really
do (a Python-float param, np.random in apply, a batching rule that mixes
examples, a wrong custom derivative, ...); the test asserts the check names
that property and says by how much.
"""

import itertools
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import lamina as lm
from lamina import testing
from lamina._src.testing.case import enable_x64

ALL_LAYERS = [
    (lm.Dense(3), (4,)),
    (lm.Dense(3, act="relu"), (2, 4)),
    (lm.Dense(2, act="tanh", use_bias=False), (3,)),
    (lm.Dense(2, w_init=lm.initializers.he_normal()), (3,)),
    *[(lm.Activation(name), (2, 3)) for name in sorted(lm.ACTIVATIONS)],
    (lm.Activation(jax.nn.gelu), (3,)),
    (lm.Relu(), (3,)),
    (lm.Sigmoid(), (3,)),
    (lm.Tanh(), (3,)),
    (lm.Softmax(), (3,)),
    (lm.LogSoftmax(), (3,)),
    (lm.serial(lm.Dense(4, act="relu"), lm.Dense(2)), (3,)),
    (lm.mlp([4, 4, 2], act="gelu", final_act="log_softmax"), (3,)),
    (lm.parallel(lm.Dense(2), lm.Identity()), (3,)),  # a tuple out
    (lm.Concat(), ((2,), (3,))),  # a tuple in
    (lm.Concat(axis=0), ((2, 3), (1, 3))),
    (lm.serial(lm.parallel(lm.Dense(2), lm.LayerNorm()), lm.Concat()), (3,)),
    (lm.residual(lm.serial(lm.Dense(4, act="tanh"), lm.Dense(3))), (3,)),
    (lm.Dropout(0.5), (5,)),
    (lm.Dropout(0.0), (5,)),
    (lm.serial(lm.Dense(4), lm.Dropout(0.3), lm.Dense(2)), (3,)),
    (lm.LayerNorm(), (4,)),
    (lm.LayerNorm(), (2, 4)),
    (lm.Flatten(), (2, 3)),
    (lm.Identity(), (3,)),
]


@pytest.mark.slow
@testing.parametrize(ALL_LAYERS)
def test_every_lamina_layer_passes(layer, input_shape):
    testing.check_layer(layer, input_shape)


@pytest.mark.slow
def test_compute_dtype_layers_pass_with_their_dtype():
    layer = lm.Dense(4, dtype=jnp.bfloat16)
    testing.check_layer(layer, (3,), dtype=jnp.bfloat16)
    with pytest.raises(AssertionError, match=r"'dtype' check: .*output has dtype bfloat16, expected float32"):
        testing.check_layer(layer, (3,))
    testing.check_layer(lm.Dense(4, dtype=jnp.float32), (3,))  # float32 whatever the input
    mixed = lm.with_dtype(lm.serial(lm.Dense(4, act="gelu"), lm.LayerNorm(), lm.Dropout(0.2)), jnp.bfloat16)
    testing.check_layer(mixed, (3,), dtype=jnp.bfloat16)


def test_a_user_layer_passes():
    def init(key, input_shape):
        return input_shape[:-1] + (2,), {"M": jax.random.normal(key, (2, input_shape[-1]))}

    def apply(params, x, *, key=None):
        return jnp.tanh(x @ params["M"].T)

    testing.check_layer(lm.Layer(init, apply, "Tanh2"), (5,))


def _attention(wrong_grad=False):
    """Single-head self-attention over `(tokens, features)` via jax.nn.dot_product_attention.

    Its softmax runs in float32 even for float64 input, so the layer computes
    in float32 internally whatever its output dtype. With `wrong_grad`, a
    custom_vjp on the output returns 1.1 times the true cotangent.
    """

    @jax.custom_vjp
    def off_by_ten_percent(y):
        return y

    off_by_ten_percent.defvjp(lambda y: (y, None), lambda _, g: (1.1 * g,))

    def init(key, input_shape):
        features = input_shape[-1]
        keys = jax.random.split(key, 3)
        return input_shape, {n: jax.random.normal(k, (features, features)) / np.sqrt(features)
                             for n, k in zip("qkv", keys)}

    def apply(params, x, *, key=None):
        q, k, v = (x @ params[n].T for n in "qkv")
        y = jax.nn.dot_product_attention(q[:, None, :], k[:, None, :], v[:, None, :])[:, 0, :]
        return off_by_ten_percent(y) if wrong_grad else y

    return lm.Layer(init, apply, "BadGradAttention" if wrong_grad else "SelfAttention")


@pytest.mark.slow
def test_a_layer_computing_in_float32_inside_passes():
    layer = _attention()
    testing.check_layer(layer, (4, 3))
    # ...where float64 finite differences at float64 tolerances fail: the
    # float32 softmax inside leaves only about 7 digits.
    _, params = layer.init(jax.random.key(1), (4, 3))
    x = np.random.default_rng(1).standard_normal((4, 3))
    with enable_x64(True):
        params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        with pytest.raises(AssertionError):
            check_grads(lambda p, x: layer.apply(p, x), (params, x), order=1, modes=["rev"],
                        eps=1e-6, atol=1e-5, rtol=1e-5)


# Deliberately broken layers, at least one per property.


def _same_shape(key, input_shape):
    return input_shape, ()


def _layer(apply, name, init=_same_shape):
    return lm.Layer(init, apply, name)


def _hidden_state_init():
    # Each init call makes W one row taller: eval_shape and init disagree.
    rows = itertools.count(2)

    def init(key, input_shape):
        n = next(rows)
        return (n,), {"W": jnp.ones((n, input_shape[-1]))}

    return init


def _batch_norm_by_vmap_rule():
    # Centers each example on the mean of the batch it is vmapped in: one
    # example's output depends on the others.
    @jax.custom_batching.custom_vmap
    def center(x):
        return x

    @center.def_vmap
    def rule(axis_size, in_batched, xs):
        return xs - jnp.mean(xs, axis=0, keepdims=True), True

    return _layer(lambda p, x, *, key=None: center(x), "BatchCenter")


def _softplus_wrong_derivative():
    @jax.custom_jvp
    def softplus(x):
        return jnp.logaddexp(x, 0.0)

    @softplus.defjvp
    def jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        return softplus(x), 2 * jax.nn.sigmoid(x) * t  # should be sigmoid(x) * t

    return _layer(lambda p, x, *, key=None: softplus(x), "BadSoftplus")


def _with_state(train_update, name, infer_update=None, init_state=None):
    """A layer with state {"ema": zeros like x} computing x - ema; training returns train_update(state, x)."""

    def apply(params, x, *, key=None, state, train=False):
        update = train_update if train else infer_update or (lambda s, x: s)
        return x - state["ema"], update(state, x)

    return lm.Layer(_same_shape, apply, name, init_state=init_state or (lambda s: {"ema": jnp.zeros(s)}))


def _first_batch_sets_state():
    # A Python branch on the state: fine eagerly, where the state is concrete,
    # but jax.jit traces it (as lm.train_step does).
    def update(state, x):
        if float(jnp.sum(state["ema"])) == 0.0:
            return {"ema": jax.lax.pmean(x, "batch")}
        return {"ema": 0.9 * state["ema"] + 0.1 * jax.lax.pmean(x, "batch")}

    return _with_state(update, "FirstBatchSetsState")


def _state_growing_per_call():
    # Each init_state call makes "ema" one longer: eval_shape and init_state disagree.
    sizes = itertools.count(2)
    return _with_state(lambda s, x: s, "GrowingState", init_state=lambda s: {"ema": jnp.zeros((next(sizes),))})


_calls = itertools.count()
_train_calls = itertools.count()
_concretizes = _layer(lambda p, x, *, key=None: x * float(x[0]), "Concretizes")

BROKEN = [
    # (layer, input_shape, property, fragments the message must contain)
    (_layer(lambda p, x, *, key=None: x, "WrongShape", lambda k, s: ((4,), ())), (3,), "shape",
     [r"WrongShape", r"declared output shape \(4,\)", r"returned shape \(3,\)"]),
    (_layer(lambda p, x, *, key=None: p["W"] @ x, "GrowingInit", _hidden_state_init()), (3,), "shape",
     [r"GrowingInit", r"jax\.eval_shape", r"\(3,\)", r"\(2,\)"]),
    # A foreign initializer is asked for the (in, out) layout: s[0] is in_features.
    (lm.Dense(3, w_init=lambda k, s, d: jax.random.normal(k, s, d) / jnp.sqrt(s[0] - 1)), (1,), "finite",
     [r"Dense\(3\)", r"params at 'W' \(shape \(3, 1\)\) holds 3 NaN or infinite value\(s\) out of 3"]),
    (_layer(lambda p, x, *, key=None: jnp.log(x), "Log"), (4,), "finite",
     [r"Log", r"output of apply\(params, x\)", r"NaN or infinite"]),
    (_layer(lambda p, x, *, key=None: x + np.random.normal(size=x.shape).astype(np.float32), "NumpyNoise"),
     (3,), "deterministic", [r"NumpyNoise", r"key=None differ", r"Max absolute difference"]),
    (_layer(lambda p, x, *, key=None: x * next(_calls), "CallCounter"), (3,), "deterministic",
     [r"CallCounter", r"key=None differ", r"Mismatched elements"]),
    (_layer(lambda p, x, *, key=None: x if key is None else x + jax.random.normal(jax.random.key(next(_calls)), x.shape),
            "FreshKeyEachCall"), (3,), "deterministic",
     [r"FreshKeyEachCall", r"with the same key differ", r"Max absolute difference"]),
    (_concretizes, (3,), "jit",
     [r"Concretizes", r"jax\.jit\(apply\) raised ConcretizationTypeError"]),
    (_layer(lambda p, x, *, key=None: x * p["scale"], "PythonFloatParam", lambda k, s: (s, {"scale": 2.0})),
     (3,), "retrace", [r"PythonFloatParam", r"traced 2 times, expected 1", r"\['scale'\] are weakly typed"]),
    (_layer(lambda p, x, *, key=None: x * p["scale"], "WeakArrayParam", lambda k, s: (s, {"scale": jnp.asarray(2.0)})),
     (3,), "retrace", [r"WeakArrayParam", r"traced 2 times", r"jnp\.asarray\(value, jnp\.float32\)"]),
    (_batch_norm_by_vmap_rule(), (4,), "vmap",
     [r"BatchCenter", r"jax\.vmap\(apply\) over 3 examples differs from a loop over them", r"Mismatched elements: 12 / 12"]),
    (_softplus_wrong_derivative(), (3,), "gradient",
     [r"BadSoftplus", r"with respect to input differ from finite differences", r"Max absolute difference"]),
    (_layer(lambda p, x, *, key=None: x + jax.lax.stop_gradient(x * x), "StopGradient"), (3,), "gradient",
     [r"StopGradient", r"with respect to input differ", r"at two random inputs"]),
    (lm.Layer(lambda k, s: (s, {"w": jnp.ones(s)}),
              lambda p, x, *, key=None: jax.lax.stop_gradient(p["w"]) * x, "FrozenWeight"), (3,), "gradient",
     [r"FrozenWeight", r"with respect to params differ"]),
    (_layer(lambda p, x, *, key=None: jax.pure_callback(
        np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x, vmap_method="sequential"), "HostSin"),
     (3,), "gradient", [r"HostSin", r"jax\.vjp raised ValueError", r"Pure callbacks do not support JVP"]),
    # Computes in float32 inside (its softmax): the relaxed tolerance still
    # catches a 10% error.
    (_attention(wrong_grad=True), (4, 3), "gradient",
     [r"BadGradAttention", r"with respect to params and input differ", r"step 0\.001, tolerance 0\.01"]),
    (_layer(lambda p, x, *, key=None: jnp.sqrt(jnp.abs(x) - jnp.abs(x)), "SqrtZero"), (3,), "gradient",
     [r"SqrtZero", r"gradient with respect to input holds NaN or infinity"]),
    (_layer(lambda p, x, *, key=None: x.astype(jnp.float16), "HalfOut"), (3,), "dtype",
     [r"HalfOut", r"has dtype float16, expected float32"]),
    (lm.parallel(lm.Identity(), _layer(lambda p, x, *, key=None: x.astype(jnp.float16), "HalfOut")), (3,),
     "dtype", [r"parallel\(Identity\(\), HalfOut\)", r"output at '1' has dtype float16"]),
    # Layers with state: init_state zeros of shape (3,), so every value is known.
    (_state_growing_per_call(), (3,), "shape",
     [r"GrowingState", r"state leaf 'ema': jax\.eval_shape\(init_state\) gives float32\[3\], "
                       r"init_state gives float32\[2\]"]),
    (lm.Layer(_same_shape, lambda p, x, *, key=None, state, train=False: x, "NoNewState",
              init_state=lambda s: {"ema": jnp.zeros(s)}), (3,), "shape",
     [r"NoNewState", r"must return \(y, new_state\) from apply, got ArrayImpl"]),
    (_with_state(lambda s, x: s, "NanState", init_state=lambda s: {"ema": jnp.full(s, jnp.nan)}), (3,), "finite",
     [r"NanState", r"state from init_state at 'ema' \(shape \(3,\)\) holds 3 NaN or infinite value\(s\) out of 3"]),
    (_with_state(lambda s, x: s, "InferenceCounts", infer_update=lambda s, x: {"ema": s["ema"] + 1.0}), (3,), "state",
     [r"InferenceCounts", r"inference \(train=False\) must return the state unchanged",
      r"state leaf 'ema' \(shape \(3,\)\) differs in 3 of 3 value\(s\), max absolute difference 1$"]),
    (_with_state(lambda s, x: {"ema": 0.9 * s["ema"] + 0.1 * x}, "NoPmean"), (3,), "state",
     [r"NoPmean", r"out_axes=\(0, None\)\) over 3 examples the new state differs between examples: leaf 'ema' by up to",
      r"jax\.lax\.pmean\(value, 'batch'\)", r"but out_axes is None"]),
    (_with_state(lambda s, x: {"ema": s["ema"].astype(jnp.float16)}, "HalfState"), (3,), "state",
     [r"HalfState", r"training \(train=True\) under jax\.vmap\(\.\.\., axis_name='batch', out_axes=\(0, None\)\)",
      r"must return a state like init_state's, but state leaf 'ema' is float16\[3\], expected float32\[3\]"]),
    (_with_state(lambda s, x: {"ema": s["ema"][:1]}, "ShortState"), (3,), "state",
     [r"ShortState", r"state leaf 'ema' is float32\[1\], expected float32\[3\]"]),
    (_with_state(lambda s, x: {**s, "count": jnp.zeros((), jnp.int32)}, "ExtraState"), (3,), "state",
     [r"ExtraState", r"the state tree is PyTreeDef\(\{'count': \*, 'ema': \*\}\), expected PyTreeDef\(\{'ema': \*\}\)"]),
    (_with_state(lambda s, x: {"ema": jnp.log(s["ema"])}, "LogState"), (3,), "state",
     [r"LogState", r"returns a state whose leaf 'ema' \(shape \(3,\)\) holds 3 NaN or infinite value\(s\) out of 3"]),
    (_with_state(lambda s, x: {"ema": s["ema"] + next(_train_calls)}, "TrainCounter"), (3,), "state",
     [r"TrainCounter", r"two calls of training .* with the same batch and keys must return the same state",
      r"differs in 3 of 3 value\(s\), max absolute difference 1$"]),
    (_first_batch_sets_state(), (3,), "state",
     [r"FirstBatchSetsState", r"jax\.jit of training \(train=True\) .* raised ConcretizationTypeError"]),
]


@pytest.mark.parametrize(
    "layer, input_shape, prop, fragments", BROKEN, ids=[f"{row[2]}-{row[0].name}" for row in BROKEN]
)
@pytest.mark.slow
def test_broken_layer_is_caught_naming_the_property(layer, input_shape, prop, fragments):
    with pytest.raises(AssertionError) as info:
        testing.check_layer(layer, input_shape)
    error = info.value
    assert isinstance(error, testing.LayerCheckError)
    assert error.property == prop and error.layer_name == layer.name
    message = str(error)
    assert message.startswith(f"{layer.name} fails check_layer's '{prop}' check: "), message
    for fragment in fragments:
        assert re.search(fragment, message), (fragment, message)


def test_every_property_has_a_broken_layer():
    assert {row[2] for row in BROKEN} == set(testing.PROPERTIES)


# Layers with state.


def _ema(seen=None):
    """A user layer keeping an exponential moving average of its inputs; output x - ema."""

    def init(key, input_shape):
        return input_shape, ()

    def init_state(input_shape):
        return {"ema": jnp.zeros(input_shape)}

    def apply(params, x, *, key=None, state, train=False):
        if seen is not None:
            seen.append((train, jax.lax.psum(1, "batch") if train else None, state["ema"].dtype))
        if train:
            return x - state["ema"], {"ema": 0.9 * state["ema"] + 0.1 * jax.lax.pmean(x, "batch")}
        return x - state["ema"], state

    return lm.Layer(init, apply, "EMA", init_state=init_state)


@testing.parametrize([
    (lm.BatchNorm(), (3,)),
    (lm.BatchNorm(), (3, 5)),
    (lm.BatchNorm(), (2, 4, 4)),
    (lm.serial(lm.Dense(4), lm.BatchNorm(), lm.Relu(), lm.Dense(2)), (5,)),
    (_ema(), (3,)),
    (_ema(), (2, 3)),
])
@pytest.mark.slow
def test_layers_with_state_pass(layer, input_shape):
    assert layer.stateful
    testing.check_layer(layer, input_shape)


def test_the_state_check_trains_over_batch_examples():
    seen = []
    testing.check_layer(_ema(seen), (3,), batch=5)
    # Training ran in a vmap named "batch" over the 5 examples...
    assert {size for train, size, _ in seen if train} == {5}
    # ...and inference, with the state in float64 for the gradient check.
    assert {dtype for train, _, dtype in seen if not train} == {jnp.dtype("float32"), jnp.dtype("float64")}


def test_a_state_from_one_example_is_reported_with_its_cause():
    with pytest.raises(testing.LayerCheckError) as info:
        testing.check_layer(_with_state(lambda s, x: {"ema": x}, "LastExample"), (2,), batch=4)
    assert info.value.property == "state"
    assert isinstance(info.value.__cause__, ValueError)
    assert "differs between examples: leaf 'ema' by up to" in str(info.value)


def _sin_in_float32(x):
    return jnp.sin(3 * x.astype(jnp.float32)).astype(x.dtype)


def _custom_jvp_sin():
    f = jax.custom_jvp(_sin_in_float32)
    f.defjvp(lambda p, t: (f(p[0]), (3 * jnp.cos(3 * p[0].astype(jnp.float32))).astype(p[0].dtype) * t[0]))
    return f


def _custom_vjp_sin():
    f = jax.custom_vjp(_sin_in_float32)
    f.defvjp(lambda x: (f(x), x),
             lambda x, g: ((3 * jnp.cos(3 * x.astype(jnp.float32))).astype(x.dtype) * g,))
    return f


# Float32 compute hidden one level down, where a walk of the top-level jaxpr
# alone would see only float64.
HIDDEN_FLOAT32 = {
    "jit": jax.jit(_sin_in_float32),
    "checkpoint": jax.checkpoint(_sin_in_float32),
    "cond": lambda x: jax.lax.cond(x[0] > -100.0, _sin_in_float32, lambda x: x, x),
    "scan": lambda x: jax.lax.scan(lambda c, _: (_sin_in_float32(c), None), x, length=2)[0],
    "custom_jvp": _custom_jvp_sin(),
    "custom_vjp": _custom_vjp_sin(),
}


@pytest.mark.slow
@pytest.mark.parametrize("where", sorted(HIDDEN_FLOAT32))
def test_float32_compute_is_found_inside_sub_jaxprs(where):
    fn = HIDDEN_FLOAT32[where]
    testing.check_layer(_layer(lambda p, x, *, key=None: fn(x), f"Sin32In_{where}"), (3,))


@pytest.mark.slow
def test_integer_input_is_drawn_in_range():
    seen = []

    def init(key, input_shape):
        return input_shape + (2,), {"W": jax.random.normal(key, (7, 2))}

    def apply(params, ids, *, key=None):
        seen.append(ids)
        return params["W"][ids]

    layer = lm.Layer(init, apply, "Embed7")
    testing.check_layer(layer, (5,), input_dtype=jnp.int32)
    concrete = [np.asarray(a) for a in seen if not isinstance(a, jax.core.Tracer)]
    assert {a.dtype for a in concrete} == {np.dtype("int32")}
    assert set(np.concatenate([a.ravel() for a in concrete]).tolist()) == {0, 1}  # [0, 2)
    seen.clear()
    testing.check_layer(layer, (40,), input_dtype=jnp.int32, int_high=7)
    concrete = [np.asarray(a) for a in seen if not isinstance(a, jax.core.Tracer)]
    assert set(np.concatenate([a.ravel() for a in concrete]).tolist()) == set(range(7))


def _embedding(frozen=False, dtype=jnp.float32):
    def init(key, input_shape):
        return input_shape + (3,), {"W": jax.random.normal(key, (2, 3), dtype)}

    def apply(params, ids, *, key=None):
        table = jax.lax.stop_gradient(params["W"]) if frozen else params["W"]
        return table[ids]

    return lm.Layer(init, apply, "FrozenEmbedding" if frozen else "Embedding")


@pytest.mark.slow
def test_an_embedding_lookup_passes_on_token_ids():
    testing.check_layer(_embedding(), (5,), input_dtype=jnp.int32)
    testing.check_layer(_embedding(), (2, 5), input_dtype=jnp.int8)  # any integer dtype
    testing.check_layer(_embedding(dtype=jnp.bfloat16), (5,), input_dtype=jnp.int32, dtype=jnp.bfloat16)
    with pytest.raises(testing.LayerCheckError,
                       match=r"for int32 input the output has dtype bfloat16, expected float32"):
        testing.check_layer(_embedding(dtype=jnp.bfloat16), (5,), input_dtype=jnp.int32)


def test_a_float_input_dtype_is_drawn_and_expected_out():
    seen = []

    def apply(params, x, *, key=None):
        seen.append(x.dtype)
        return 2 * x

    testing.check_layer(_layer(apply, "Double"), (3,), input_dtype=jnp.bfloat16)
    assert jnp.dtype(jnp.bfloat16) in seen and jnp.dtype(jnp.float32) not in seen
    with pytest.raises(testing.LayerCheckError,
                       match=r"for bfloat16 input the output has dtype float32, expected bfloat16"):
        testing.check_layer(_layer(lambda p, x, *, key=None: x.astype(jnp.float32), "Up"), (3,),
                            input_dtype=jnp.bfloat16)


BROKEN_ON_IDS = [
    # (layer, property, fragments), each checked on int32 ids of shape (5,)
    (_layer(lambda p, ids, *, key=None: 2 * ids, "IdsOut"), "dtype",
     [r"for int32 input the output has dtype int32, expected float32"]),
    (_embedding(frozen=True), "gradient",
     [r"gradients with respect to params differ from finite differences", r"step 1e-06"]),
    (lm.Layer(lambda k, s: (s, {"W": jnp.ones((2,))}),
              lambda p, ids, *, key=None: p["W"][ids] * float(ids[0]), "ConcretizesId"), "jit",
     [r"jax\.jit\(apply\) raised ConcretizationTypeError"]),
]


@pytest.mark.parametrize("layer, prop, fragments", BROKEN_ON_IDS,
                         ids=[f"{row[1]}-{row[0].name}" for row in BROKEN_ON_IDS])
def test_broken_layer_on_token_ids_is_caught(layer, prop, fragments):
    with pytest.raises(testing.LayerCheckError) as info:
        testing.check_layer(layer, (5,), input_dtype=jnp.int32)
    assert info.value.property == prop
    for fragment in fragments:
        assert re.search(fragment, str(info.value)), (fragment, str(info.value))


def test_an_exception_inside_a_check_is_chained():
    no_key = _layer(lambda p, x: x, "NoKeyword")  # apply without key=
    with pytest.raises(testing.LayerCheckError, match=r"'deterministic' check: calling apply\(params, x, key=k\) raised TypeError") as info:
        testing.check_layer(no_key, (3,))
    assert isinstance(info.value.__cause__, TypeError)
    with pytest.raises(testing.LayerCheckError) as info:
        testing.check_layer(_concretizes, (3,))
    assert isinstance(info.value.__cause__, jax.errors.ConcretizationTypeError)


def test_init_that_fails_is_a_shape_failure():
    with pytest.raises(testing.LayerCheckError, match=r"residual\(Dense\(5\)\) fails check_layer's 'shape' check: init\(key, \(4,\)\) raised ValueError: .*maps \(4,\) to \(5,\)"):
        testing.check_layer(lm.residual(lm.Dense(5)), (4,))


def test_a_kink_straddled_by_the_step_is_not_a_failure():
    # Every unit sits 1e-7 above relu's kink at the first input check_layer
    # draws, so the finite-difference step (1e-6) straddles it there.
    first = []

    def apply(params, x, *, key=None):
        if not first:
            first.append(np.asarray(x))
        return jax.nn.relu(x - first[0] + 1e-7)

    layer = _layer(apply, "KinkAtFirstInput")
    testing.check_layer(layer, (6,))  # the second random input decides
    with enable_x64(True):
        x0 = np.asarray(first[0], np.float64)
        with pytest.raises(AssertionError):  # ...and the first alone would fail
            check_grads(lambda x: apply((), x), (x0,), order=1, modes=["rev"], eps=1e-6)


def test_x64_is_restored_after_the_gradient_check():
    assert not jax.config.jax_enable_x64
    testing.check_layer(lm.Dense(2), (3,))
    assert not jax.config.jax_enable_x64
    with pytest.raises(testing.LayerCheckError):
        testing.check_layer(_softplus_wrong_derivative(), (3,))
    assert not jax.config.jax_enable_x64


@pytest.mark.slow
def test_x64_stays_on_when_it_was_on(x64):
    testing.check_layer(lm.mlp([3, 2]), (4,))
    assert jax.config.jax_enable_x64


def test_the_gradient_check_runs_in_float64():
    seen = []

    def apply(params, x, *, key=None):
        seen.append(x.dtype)
        return jnp.sin(x)

    testing.check_layer(_layer(apply, "Spy"), (3,))
    assert jnp.dtype("float64") in seen and jnp.dtype("float32") in seen


def test_vmap_check_vmaps_over_batch_examples():
    sizes = []

    @jax.custom_batching.custom_vmap
    def spy(x):
        return x

    @spy.def_vmap
    def rule(axis_size, in_batched, xs):
        sizes.append(axis_size)
        return xs, in_batched[0]

    # custom_vmap has no reverse mode, so the check gets past vmap to 'gradient'.
    with pytest.raises(testing.LayerCheckError, match="'gradient' check"):
        testing.check_layer(_layer(lambda p, x, *, key=None: spy(x), "Spy"), (2,), batch=5)
    assert sizes and set(sizes) == {5}


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(layer=lambda p, x: x, input_shape=(3,)), r"check_layer: expected a lamina Layer"),
        (dict(layer=lm.Dense(2), input_shape=3), r"input_shape must be the shape of one example.*got 3"),
        (dict(layer=lm.Dense(2), input_shape=(3,), key=0), r"check_layer: expected a PRNG key.*got int 0"),
        (dict(layer=lm.Dense(2), input_shape=(3,), batch=0), r"batch must be an int >= 1, got 0"),
    ],
)
def test_bad_arguments(kwargs, pattern):
    layer, shape = kwargs.pop("layer"), kwargs.pop("input_shape")
    with pytest.raises(TypeError, match=pattern):
        testing.check_layer(layer, shape, **kwargs)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(input_dtype="words"), TypeError,
         r"check_layer: input_dtype must be a float or integer dtype such as jnp\.float32 or jnp\.int32, got 'words'"),
        (dict(input_dtype=jnp.bool_), TypeError, r"input_dtype must be a float or integer dtype.*got <class"),
        (dict(input_dtype=None), TypeError, r"input_dtype must be a float or integer dtype.*got None"),
        (dict(input_dtype=jnp.int32, int_high=2.0), TypeError, r"check_layer: int_high must be an int, got 2\.0"),
        (dict(input_dtype=jnp.int32, int_high=0), ValueError, r"check_layer: int_high must be >= 1, got 0"),
        (dict(input_dtype=jnp.int8, int_high=129), ValueError,
         r"int_high must be at most 128 for input_dtype int8 \(ids are drawn from \[0, int_high\)\), got 129"),
    ],
)
def test_bad_input_dtype_or_int_high(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        testing.check_layer(_embedding(), (5,), **kwargs)


def _masked_softmax(scores, mask):
    return jax.nn.softmax(jnp.where(mask, -jnp.inf, scores), axis=-1)


def test_bool_masks_are_drawn_as_torch_masks_and_never_mask_a_whole_row():
    seen = []

    def apply(p, x, *, key=None):
        seen.append(x["mask"])
        return _masked_softmax(x["scores"], x["mask"])  # NaN on a row masked whole

    layer = lm.Layer(lambda k, s: (s["scores"], ()), apply, "MaskedSoftmax")
    shapes = {"scores": (8, 2), "mask": (8, 2)}  # rows of two: a whole row would be common
    testing.check_layer(layer, shapes, input_dtype={"scores": jnp.float32, "mask": jnp.bool_})
    masks = np.concatenate([np.asarray(m).reshape(-1, 2) for m in seen
                            if not isinstance(m, jax.core.Tracer)])
    assert masks.dtype == np.bool_ and masks.any(1).mean() > 0.3  # masks something
    assert not masks.all(1).any()  # and never a whole row


def _wrong_grad_of_x():
    @jax.custom_vjp
    def scale(x, t):
        return x * t

    scale.defvjp(lambda x, t: (x * t, t), lambda t, g: (2 * g * t, None))  # twice the truth
    return lm.Layer(lambda k, s: (s[0], ()), lambda p, x, *, key=None: scale(x[0], x[1][:, None]),
                    "WrongGrad")


def test_float_inputs_are_differentiated_while_integer_ones_are_held():
    times = lm.Layer(lambda k, s: (s[0], ()),
                     lambda p, x, *, key=None: x[0] * x[1][:, None].astype(x[0].dtype), "Times")
    testing.check_layer(times, ((3, 2), (3,)), input_dtype=(jnp.float32, jnp.int32), int_high=5)
    with pytest.raises(testing.LayerCheckError, match=r"WrongGrad fails check_layer's 'gradient' "
                                                      r"check.*with respect to input differ"):
        testing.check_layer(_wrong_grad_of_x(), ((3, 2), (3,)),
                            input_dtype=(jnp.float32, jnp.float32))


def test_a_timestep_model_checks_with_an_image_and_integer_timesteps():
    model = lm.serial(
        lm.parallel(lm.serial(lm.Select(0), lm.Conv(4, 3, padding=1)),
                    lm.serial(lm.Select(1), lm.Timesteps(4), lm.Dense(4), lm.Reshape((4, 1, 1)))),
        lm.Add())
    testing.check_layer(model, ((2, 5, 5), ()), input_dtype=(jnp.float32, jnp.int32),
                        int_high=1000)


@pytest.mark.parametrize("input_dtype, pattern", [
    ({"x": jnp.float32}, r"input_dtype must be a float or integer dtype such as jnp\.float32 or "
                         r"jnp\.int32, or a tuple or dict of them \(bool too, for masks\) shaped "
                         r"like input_shape: input_dtype has keys \['x'\], input_shape "
                         r"\['x', 'mask'\]"),
    ((jnp.float32,), r"shaped like input_shape, got \(<class 'jax.numpy.float32'>,\)$"),
    ({"x": jnp.float32, "mask": "words"}, r"shaped like input_shape, got 'words' in \{"),
])
def test_input_dtypes_not_shaped_like_the_input_are_refused(input_dtype, pattern):
    layer = lm.Layer(lambda k, s: (s["x"], ()), lambda p, x, *, key=None: x["x"], "First")
    with pytest.raises(TypeError, match=r"check_layer: .*" + pattern):
        testing.check_layer(layer, {"x": (3,), "mask": (3,)}, input_dtype=input_dtype)


def test_parametrize_ids_and_values():
    cases = [(lm.Dense(3, act="relu"), (4,)), (lm.Concat(), ((3,), (5,))), (lm.Identity(), ())]
    mark = testing.parametrize(cases)
    assert mark.name == "parametrize"
    assert mark.args == ("layer, input_shape", cases)
    assert mark.kwargs["ids"] == ["Dense(3, relu)-4", "Concat(axis=-1)-3|5", "Identity()-scalar"]
    with pytest.raises(TypeError, match=r"parametrize: case 1 must be a \(layer, input_shape\) pair"):
        testing.parametrize([(lm.Dense(3), (4,)), lm.Dense(3)])
    with pytest.raises(TypeError, match=r"parametrize: case 0: expected a lamina Layer"):
        testing.parametrize([("Dense", (4,))])


@pytest.mark.slow
def test_imports_without_pytest():
    code = "import sys; sys.modules['pytest'] = None; import lamina.testing; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.slow
def test_integer_params_are_held_fixed_and_legacy_keys_work():
    def init(key, input_shape):
        return input_shape, {"w": jax.random.normal(key, input_shape), "n": jnp.int32(3)}

    def apply(params, x, *, key=None):
        return x * params["w"] * params["n"]

    testing.check_layer(lm.Layer(init, apply, "IntLeaf"), (3,))
    testing.check_layer(lm.serial(lm.Dense(3), lm.Dropout(0.5)), (4,), key=jax.random.PRNGKey(3))
