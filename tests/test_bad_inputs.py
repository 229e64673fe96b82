"""A catalogue of bad inputs: each is rejected with the documented exception,
and its message says what was expected AND what came.

Every row is a trace-time (or construction-time) check, so none should take
long; each runs under a deadline so that a regression that hangs fails
instead. `FILE_BAD_INPUTS` below is the place for `lm.save`/`lm.load` rows.
"""

import contextlib
import functools
import re
import signal
import threading
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
import pytest

import lamina as lm

xent = optax.softmax_cross_entropy_with_integer_labels


class Bad(NamedTuple):
    id: str
    call: Callable[..., Any]
    error: type
    fragments: list  # regexes the message must contain: what was expected, what came


@functools.cache
def _setup():
    """A small classifier, its params and a batch: (model, params, xs, ys)."""
    model = lm.mlp([4, 3])
    _, params = model.init(jax.random.key(0), (2,))
    xs = jax.random.normal(jax.random.key(1), (6, 2))
    ys = jnp.array([0, 1, 2, 0, 1, 2])
    return model, params, xs, ys


def _model():
    return _setup()[0]


def _params():
    # Copies: train_step and fit donate the params they are given.
    return jax.tree.map(jnp.copy, _setup()[1])


def _x(*shape, dtype=jnp.float32):
    return jnp.ones(shape, dtype)


def _key():
    return jax.random.key(0)


def _fit(data=None, **kwargs):
    _, _, xs, ys = _setup()
    args = dict(loss_fn=xent, epochs=1, batch_size=2, key=_key(), progress=False)
    args.update(kwargs)
    return lm.fit(_model(), _params(), optax.sgd(0.1), (xs, ys) if data is None else data, **args)


def _step(batch=None, **kwargs):
    _, _, xs, ys = _setup()
    opt = optax.sgd(0.1)
    step = lm.train_step(_model(), xent, opt)
    params = _params()
    return step(params, opt.init(params), (xs, ys) if batch is None else batch, **kwargs)


BAD_INPUTS = [
    # training helpers
    Bad("evaluate-batch-size-zero",
        lambda: lm.evaluate(_model(), _params(), _setup()[2:], loss_fn=xent, batch_size=0), ValueError,
        [r"evaluate: batch_size must be an int >= 1", r"got 0"]),
    Bad("train_step-batch-not-a-pair", lambda: _step(batch=_setup()[2]), TypeError,
        [r"train_step: batch must be an \(inputs, targets\) pair", r"got one array of shape \(6, 2\)"]),
    Bad("accuracy-scalar-logits", lambda: lm.accuracy(jnp.float32(1.0), jnp.int32(0)), ValueError,
        [r"accuracy: expected logits \(N, classes\)", r"got logits \(\)"]),
    Bad("torch_bias-fan-in-zero", lambda: lm.initializers.torch_bias(0), ValueError,
        [r"torch_bias: fan_in must be an int >= 1", r"got 0"]),
    Bad("he_normal-one-dimensional", lambda: lm.initializers.he_normal()(_key(), (3,)), ValueError,
        [r"\(out, in\) shape", r"got shape \(3,\)"]),
    Bad("LayerNorm-params-wrong-kind", lambda: lm.LayerNorm().apply((), _x(4)), TypeError,
        [r"LayerNorm\(\): expected params \{'scale'", r"got tuple"]),
    # constructors
    Bad("Dense-out_features-zero", lambda: lm.Dense(0), ValueError,
        [r"Dense: out_features must be >= 1", r"got 0"]),
    Bad("Dense-out_features-float", lambda: lm.Dense(3.5), TypeError,
        [r"out_features must be an int", r"got float 3\.5"]),
    Bad("Dense-unknown-activation", lambda: lm.Dense(3, act="rleu"), ValueError,
        [r"Dense\(3\): unknown activation 'rleu'", r"choose one of .*relu"]),
    Bad("Dense-initializer-not-callable", lambda: lm.Dense(3, w_init="glorot"), TypeError,
        [r"w_init must be an initializer \(key, shape, dtype\) -> array", r"got str 'glorot'"]),
    Bad("Dense-use_bias-string", lambda: lm.Dense(3, use_bias="no"), TypeError,
        [r"Dense\(3\): use_bias must be True or False", r"got str 'no'"]),
    Bad("Dense-dtype-unknown", lambda: lm.Dense(3, dtype="float33"), TypeError,
        [r"dtype must be a floating-point dtype", r"got 'float33'"]),
    Bad("Dense-param_dtype-integer", lambda: lm.Dense(3, param_dtype=jnp.int32), TypeError,
        [r"param_dtype must be a floating-point dtype", r"int32"]),
    Bad("Activation-not-callable", lambda: lm.Activation(3), TypeError,
        [r"act must be an activation name, a callable or None", r"got int 3"]),
    Bad("serial-empty", lambda: lm.serial(), ValueError,
        [r"serial: needs at least one layer", r"got none"]),
    Bad("serial-uncalled-layer", lambda: lm.serial(lm.Dense(2), lm.Relu), TypeError,
        [r"argument 1 must be a lamina Layer", r"got function .*forget to call it"]),
    Bad("parallel-not-a-layer", lambda: lm.parallel(3), TypeError,
        [r"parallel: argument 0 must be a lamina Layer", r"got int 3"]),
    Bad("mlp-int", lambda: lm.mlp(10), TypeError,
        [r"mlp: features must be a list of layer sizes such as \[256, 10\]", r"got int 10"]),
    Bad("mlp-string", lambda: lm.mlp("256"), TypeError,
        [r"mlp: features must be a list of layer sizes", r"got str '256'"]),
    Bad("Dropout-rate-one", lambda: lm.Dropout(1.0), ValueError,
        [r"Dropout: rate must be in \[0, 1\)", r"got 1\.0"]),
    Bad("Dropout-rate-string", lambda: lm.Dropout("0.5"), TypeError,
        [r"rate must be a number in \[0, 1\)", r"got '0\.5'"]),
    Bad("LayerNorm-eps-zero", lambda: lm.LayerNorm(eps=0), ValueError,
        [r"LayerNorm: eps must be > 0", r"got 0"]),
    Bad("LayerNorm-eps-string", lambda: lm.LayerNorm(eps="1e-5"), TypeError,
        [r"LayerNorm: eps must be a number > 0", r"got '1e-5'"]),
    Bad("Concat-axis-string", lambda: lm.Concat(axis="x"), TypeError,
        [r"Concat: axis must be an int", r"got str 'x'"]),
    # init: keys and shapes
    Bad("init-int-seed-as-key", lambda: lm.Dense(3).init(0, (4,)), TypeError,
        [r"Dense\(3\): expected a PRNG key such as jax\.random\.key\(0\)", r"got int 0"]),
    Bad("init-misshaped-uint32-key", lambda: lm.Dense(3).init(jnp.zeros(3, jnp.uint32), (4,)), TypeError,
        [r"expected a PRNG key", r"got array of dtype uint32 and shape \(3,\)"]),
    Bad("init-nested-int-seed", lambda: lm.residual(lm.Dense(2)).init(3, (2,)), TypeError,
        [r"residual\(Dense\(2\)\): expected a PRNG key", r"got int 3"]),
    Bad("init-shape-int", lambda: lm.Dense(3).init(_key(), 4), TypeError,
        [r"input_shape must be a tuple of ints \(the shape of one example, e\.g\. \(784,\)\)", r"got 4"]),
    Bad("init-shape-floats", lambda: lm.Dense(3).init(_key(), (4.0,)), TypeError,
        [r"input_shape must hold ints", r"got \(4\.0,\)"]),
    Bad("init-shape-negative", lambda: lm.Dense(3).init(_key(), (-1,)), ValueError,
        [r"input_shape dimensions must be >= 1", r"got \(-1,\)"]),
    Bad("init-shape-scalar-for-Dense", lambda: lm.Dense(3).init(_key(), ()), ValueError,
        [r"expected an input_shape with at least 1 dimension", r"got \(\)"]),
    Bad("init-shape-scalar-for-Flatten", lambda: lm.Flatten().init(_key(), ()), ValueError,
        [r"Flatten\(\): expected an input_shape with at least 1 dimension", r"got \(\)"]),
    Bad("init-residual-changes-shape", lambda: lm.residual(lm.Dense(5)).init(_key(), (4,)), ValueError,
        [r"x \+ f\(x\) needs f to keep the shape", r"maps \(4,\) to \(5,\)"]),
    Bad("init-Concat-after-a-single-array", lambda: lm.serial(lm.Dense(3), lm.Concat()).init(_key(), (2,)),
        ValueError, [r"serial\[1\] Concat\(axis=-1\): expects a tuple of inputs", r"got input shape \(3,\)"]),
    Bad("init-Concat-unjoinable", lambda: lm.Concat(axis=0).init(_key(), ((2, 3), (2, 4))), ValueError,
        [r"shapes \[\(2, 3\), \(2, 4\)\] differ outside axis 0", r"cannot be joined"]),
    # apply: inputs and params
    Bad("apply-wrong-feature-size", lambda: _model().apply(_params(), _x(5)), ValueError,
        [r"serial\[0\] Dense\(4, relu\): expected input with last dimension 2 \(W has shape \(4, 2\)\)",
         r"got x with shape \(5,\)"]),
    Bad("apply-scalar-input", lambda: _model().apply(_params(), _x()), ValueError,
        [r"expected input with last dimension 2", r"got a scalar x with shape \(\)"]),
    Bad("apply-integer-input", lambda: _model().apply(_params(), _x(2, dtype=jnp.int32)), TypeError,
        [r"expected a floating-point input", r"got x of dtype int32 with shape \(2,\)"]),
    Bad("apply-string-input", lambda: _model().apply(_params(), "ab"), TypeError,
        [r"serial\[0\] Dense\(4, relu\): expected a floating-point array", r"got str 'ab'"]),
    Bad("apply-transposed-W", lambda: lm.Dense(3).apply({"W": _x(4, 3), "b": _x(4)}, _x(4)), ValueError,
        [r"expected W of shape \(3, in\)", r"got \(4, 3\) \(transposed\?"]),
    Bad("apply-missing-bias", lambda: lm.Dense(3).apply({"W": _x(3, 4)}, _x(4)), ValueError,
        [r"params have no bias 'b'", r"built with use_bias=True"]),
    Bad("dense-params-not-a-dict", lambda: lm.dense([1, 2], _x(2)), TypeError,
        [r"dense: expected params \{'W': \(out, in\), 'b': \(out,\)\}", r"got list"]),
    Bad("apply-params-tree-of-another-kind", lambda: _model().apply({"W": 1}, _x(2)), ValueError,
        [r"expected params as a tuple of 2 entries \(one per layer\)", r"got dict"]),
    Bad("apply-params-tree-too-short", lambda: _model().apply(_params()[:1], _x(2)), ValueError,
        [r"expected params as a tuple of 2 entries", r"got a tuple of length 1"]),
    Bad("LayerNorm-wrong-width",
        lambda: lm.LayerNorm().apply({"scale": _x(3), "offset": _x(3)}, _x(4)), ValueError,
        [r"expected input with last dimension 3 \(scale has shape \(3,\)\)", r"got x with shape \(4,\)"]),
    Bad("Dropout-int-seed-as-key", lambda: lm.Dropout(0.5).apply((), _x(3), key=0), TypeError,
        [r"Dropout\(0\.5\): expected a PRNG key", r"got int 0"]),
    Bad("Flatten-scalar-input", lambda: lm.Flatten().apply((), _x()), ValueError,
        [r"expected an array with at least one axis", r"got a scalar"]),
    Bad("Concat-single-array", lambda: lm.Concat().apply((), _x(3)), TypeError,
        [r"expects a tuple of arrays", r"got ArrayImpl"]),
    Bad("Concat-unjoinable-arrays", lambda: lm.Concat().apply((), (_x(2, 3), _x(3, 2))), ValueError,
        [r"Concat\(axis=-1\): shapes \[\(2, 3\), \(3, 2\)\] differ outside axis -1"]),
    # forward, trace, params
    Bad("forward-unbatched", lambda: lm.forward(_model())(_params(), jnp.float32(1)), ValueError,
        [r"lm\.forward expects a batch with a leading batch axis", r"got xs with shape \(\)"]),
    Bad("forward-not-a-layer", lambda: lm.forward(lambda p, x: x), TypeError,
        [r"forward: expected a lamina Layer", r"got function"]),
    Bad("forward-int-seed-as-key", lambda: lm.forward(_model())(_params(), _x(3, 2), key=0), TypeError,
        [r"serial\(Dense\(4, relu\), Dense\(3\)\): expected a PRNG key", r"got array of dtype int32 and shape \(\)"]),
    Bad("trace-wrong-feature-size", lambda: lm.trace(_model(), _params(), _x(5)), ValueError,
        [r"expected input with last dimension 2", r"got x with shape \(5,\)"]),
    Bad("param_shapes-int-shape", lambda: lm.param_shapes(_model(), 784), TypeError,
        [r"serial\[0\] Dense\(4, relu\): input_shape must be a tuple of ints", r"got 784"]),
    Bad("check_params-another-model", lambda: lm.check_params(_model(), lm.mlp([5, 3]).init(_key(), (2,))[1], (2,)),
        ValueError, [r"params do not fit the model at '0\.W'", r"expected shape \(4, 2\), got \(5, 2\)"]),
    Bad("check_params-transposed",
        lambda: lm.check_params(_model(), ({"W": _x(2, 4), "b": _x(4)}, _params()[1]), (2,)), ValueError,
        [r"expected shape \(4, 2\), got \(2, 4\)", r"transposed\?"]),
    # training
    Bad("train_step-loss-not-callable", lambda: lm.train_step(_model(), "mse", optax.sgd(0.1)), TypeError,
        [r"loss_fn must be callable \(outputs, targets\) -> loss", r"got 'mse'"]),
    Bad("train_step-optimizer-string", lambda: lm.train_step(_model(), xent, "adam"), TypeError,
        [r"optimizer must be an optax\.GradientTransformation", r"got str"]),
    Bad("train_step-int-seed-as-key", lambda: _step(key=0), TypeError,
        [r"expected a PRNG key", r"got array of dtype int32 and shape \(\)"]),
    Bad("train_step-wrong-feature-size", lambda: _step((_x(6, 5), jnp.zeros(6, jnp.int32))), ValueError,
        [r"expected input with last dimension 2", r"got x with shape \(5,\)"]),
    Bad("train_step-empty-batch", lambda: _step((_setup()[2][:0], _setup()[3][:0])), ValueError,
        [r"train_step: batch is empty: 0 examples", r"inputs of shape \(0, 2\)"]),
    Bad("per_example_grads-empty-batch",
        lambda: lm.per_example_grads(_model(), xent)(_params(), (_x(0, 2), jnp.zeros(0, jnp.int32))), ValueError,
        [r"per_example_grads: batch is empty: 0 examples", r"inputs of shape \(0, 2\)"]),
    Bad("per_example_grads-loss-none", lambda: lm.per_example_grads(_model(), None), TypeError,
        [r"loss_fn must be callable", r"got None"]),
    Bad("fit-NaN-input", lambda: _fit((_setup()[2].at[2, 1].set(jnp.nan), _setup()[3])), ValueError,
        [r"fit: train_data: inputs hold 1 NaN or infinite value\(s\)", r"the first at index \(2, 1\)"]),
    Bad("fit-inf-input", lambda: _fit((_setup()[2].at[4, 0].set(-jnp.inf), _setup()[3])), ValueError,
        [r"NaN or infinite value\(s\)", r"the first at index \(4, 0\)"]),
    Bad("fit-int-seed-as-key", lambda: _fit(key=0), TypeError,
        [r"fit: expected a PRNG key such as jax\.random\.key\(0\)", r"got int 0"]),
    Bad("fit-targets-out-of-range", lambda: _fit((_setup()[2], _setup()[3].at[3].set(7))), ValueError,
        [r"targets must be class indices in \[0, 3\) for a model with 3 outputs", r"got 7 at index 3"]),
    Bad("fit-length-mismatch", lambda: _fit((_setup()[2], _setup()[3][:5])), ValueError,
        [r"inputs have 6 examples but targets have 5"]),
    Bad("fit-no-examples", lambda: _fit((_setup()[2][:0], _setup()[3][:0])), ValueError,
        [r"fit: train_data: is empty", r"0 examples"]),
    Bad("fit-not-a-pair", lambda: _fit(_setup()[2]), TypeError,
        [r"expected an \(inputs, targets\) pair of arrays", r"got ArrayImpl"]),
    Bad("fit-epochs-zero", lambda: _fit(epochs=0), ValueError,
        [r"fit: epochs must be an int >= 1", r"got 0"]),
    Bad("fit-wrong-feature-size", lambda: _fit((_x(6, 5), _setup()[3])), ValueError,
        [r"params do not fit the model at '0\.W'", r"expected shape \(4, 5\), got \(4, 2\) \(for inputs of shape \(5,\)\)"]),
    Bad("evaluate-params-mismatch",
        lambda: lm.evaluate(_model(), _params()[:1], _setup()[2:], loss_fn=xent), ValueError,
        [r"expected a tuple of length 2", r"got a tuple of length 1"]),
    Bad("accuracy-shape-mismatch", lambda: lm.accuracy(_x(4, 3), jnp.zeros(5, jnp.int32)), ValueError,
        [r"expected logits \(N, classes\) and labels \(N,\) or one-hot", r"got logits \(4, 3\) and labels \(5,\)"]),
    # what a fault-and-hostile-input probe found raising raw errors
    Bad("Dense-size-beyond-indexing", lambda: lm.Dense(10**12), ValueError,
        [r"Dense: out_features must be at most 2\*\*31 - 1 = 2147483647", r"got 1000000000000"]),
    Bad("init-shape-beyond-indexing", lambda: lm.Dense(3).init(_key(), (2**40,)), ValueError,
        [r"input_shape dimensions must be at most 2\*\*31 - 1", r"got \(1099511627776,\)"]),
    Bad("param_labels-list-of-rules", lambda: lm.param_labels(_params(), [r"0\..*"], "train"), TypeError,
        [r"param_labels: rules must be a dict of regular expression -> label", r"got list"]),
    Bad("per_example_grads-train-keyword",
        lambda: lm.per_example_grads(_model(), xent)(_params(), _setup()[2:], train=True), TypeError,
        [r"per_example_grads: train=True is not possible", r"always in inference mode"]),
    Bad("to_torch-model-with-state-without-state",
        lambda: lm.to_torch(lm.serial(lm.Dense(2), lm.BatchNorm()).init(_key(), (3,))[1],
                            model=lm.serial(lm.Dense(2), lm.BatchNorm())), TypeError,
        [r"to_torch: serial\(Dense\(2\), BatchNorm\(\)\) has state", r"pass state="]),
    Bad("MultiHeadAttention-tuple-input",
        lambda: lm.MultiHeadAttention(2).apply(lm.MultiHeadAttention(2).init(_key(), (3, 4))[1],
                                               (_x(3, 4), _x(5, 4))), TypeError,
        [r"MultiHeadAttention\(2\): expected one array, got a tuple of 2 inputs with shapes "
         r"\(\(3, 4\), \(5, 4\)\)"]),
    Bad("remat-policy-not-a-policy", lambda: lm.remat(lm.Dense(2), policy=lambda x, y: x), TypeError,
        [r"remat: policy .* is not a checkpoint policy", r"instead of True or False"]),
    Bad("fit-float-labels-integer-loss", lambda: _fit((_setup()[2], _setup()[3].astype(jnp.float32))),
        ValueError, [r"fit: loss_fn softmax_cross_entropy_with_integer_labels fails",
                     r"targets are float32, but .* takes integer class labels"]),
    Bad("fit-one-hot-labels-integer-loss",
        lambda: _fit((_setup()[2], jax.nn.one_hot(_setup()[3], 3).astype(jnp.int32))), ValueError,
        [r"targets \(2, 3\) int32", r"look one-hot", r"labels\.argmax\(-1\)"]),
    Bad("fit-embedding-id-out-of-range",
        lambda: lm.fit(lm.serial(lm.Embedding(5, 2), lm.Flatten(), lm.Dense(3)),
                       lm.serial(lm.Embedding(5, 2), lm.Flatten(), lm.Dense(3)).init(_key(), (2,))[1],
                       optax.sgd(0.1), (jnp.array([[0, 1], [2, 7]]), jnp.array([0, 1])), loss_fn=xent,
                       epochs=1, batch_size=2, key=_key(), progress=False), ValueError,
        [r"fit: train_data: example 1: serial\[0\] Embedding\(5, 2\): id 7 at index \(1,\) is out of range"]),
]

# --- files: lm.save / lm.load -----------------------------------------------
# Rows for the checkpoint API go here, in the same form, as the API lands.
# Their callables take the test's `tmp_path` (a pathlib.Path), e.g.
#   Bad("load-missing-file", lambda tmp: lm.load(tmp / "nope.safetensors"),
#       FileNotFoundError, [r"nope\.safetensors"]),
def _good_file(tmp_path):
    path = tmp_path / "model.safetensors"
    lm.save(path, _params())
    return path


def _keeps_file(action):
    """Runs `action(path)` against a saved checkpoint; it must fail and leave the file as it was."""

    def run(tmp_path):
        path = _good_file(tmp_path)
        before = path.read_bytes()
        try:
            action(path)
        finally:
            assert path.read_bytes() == before, "a failed call changed the file on disk"
            assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"], "temporary file left"

    return run


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _torch_sd():
    np_params = jax.device_get(_params())
    return {"0.weight": np_params[0]["W"], "0.bias": np_params[0]["b"]}  # one Linear, model has two


FILE_BAD_INPUTS = [
    Bad("load-missing-file", lambda t: lm.load(t / "nope.safetensors"), FileNotFoundError,
        [r"nope\.safetensors"]),
    Bad("load-truncated-file", lambda t: lm.load(_write(t, "cut.safetensors", _good_file(t).read_bytes()[:-7])),
        ValueError, [r"load\('.*cut\.safetensors'\)", r"truncated"]),
    Bad("load-pickle-refused",
        lambda t: lm.load(_write(t, "evil.pkl", b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00.")),
        ValueError, [r"evil\.pkl", r"pickle", r"not a safetensors file"]),
    Bad("load-random-bytes", lambda t: lm.load(_write(t, "noise.bin", b"GIF89a" + bytes(40))), ValueError,
        [r"noise\.bin", r"not a safetensors file", r"starts with"]),
    Bad("load-like-shape-mismatch", lambda t: lm.load(_good_file(t), like=(lm.mlp([5, 3]), (2,))), ValueError,
        [r"load\(", r"at '0\.W': expected shape \(5, 2\) float32", r"got shape \(4, 2\)"]),
    Bad("save-metadata-not-text-keeps-file",
        _keeps_file(lambda path: lm.save(path, _params(), metadata={"epoch": 3})), TypeError,
        [r"save\(", r"metadata must map str to str", r"int 3"]),
    Bad("save-reserved-metadata-keeps-file",
        _keeps_file(lambda path: lm.save(path, _params(), metadata={"lamina.version": "9"})), ValueError,
        [r"metadata key 'lamina\.version' is reserved"]),
    Bad("save-non-array-leaf-keeps-file",
        _keeps_file(lambda path: lm.save(path, ({"W": "weights"},))), TypeError,
        [r"at '0\.W': expected an array", r"got str 'weights'"]),
    Bad("save-into-missing-folder", lambda t: lm.save(t / "no" / "m.safetensors", _params()), FileNotFoundError,
        [r"save\(", r"does not exist"]),
    Bad("from_torch-too-few-layers", lambda t: lm.from_torch(_torch_sd(), like=_params()), ValueError,
        [r"from_torch: torch has 1 module\(s\) with weights \['0'\]", r"lamina params have 2 weighted layer\(s\)"]),
    Bad("load_exported-not-an-artifact", lambda t: lm.load_exported(b"\x00" * 64), ValueError,
        [r"load_exported: not a jax\.export artifact", r"64 bytes"]),
    Bad("load-a-folder", lambda t: lm.load(t), ValueError, [r"load\('.*'\): this is a folder"]),
    Bad("load_exported-damaged-program", lambda t: lm.load_exported(_damaged_export()), ValueError,
        [r"load_exported: not a jax\.export artifact"]),
    Bad("load_model-unknown-keyword",
        lambda t: lm.load_model(_edited_model(t, '"out_features": 3', '"out_features": 3, "colour": 1')),
        ValueError, [r"load_model\(.*\): corrupted model description: Dense: .*colour"]),
]


def _damaged_export():
    data = bytearray(lm.export(_model(), _params(), (2,)))
    start = data.find(b"ML\xefR")  # the StableHLO bytecode's magic number
    assert start > 0
    for i in range(start + 8, min(start + 400, len(data))):
        data[i] ^= 0x5A
    return bytes(data)


def _edited_model(tmp_path, old, new):
    """A file saved with model=, its model description edited as text (same length or not)."""
    import json
    import struct

    path = tmp_path / "model.safetensors"
    lm.save(path, _params(), model=_model())
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    text = header["__metadata__"]["lamina.model"]
    assert old in text, text
    header["__metadata__"]["lamina.model"] = text.replace(old, new)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data[8 + n :])
    return path


@contextlib.contextmanager
def _deadline(seconds: float):
    """Fails a call that neither returns nor raises within `seconds`."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield  # no SIGALRM here (Windows, or a worker thread): run unguarded
        return

    def on_alarm(signum, frame):
        raise TimeoutError(f"a bad input was not rejected within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _assert_rejected(bad: Bad, *args):
    with _deadline(60):
        with pytest.raises(bad.error) as info:
            bad.call(*args)
    message = str(info.value)
    for fragment in bad.fragments:
        assert re.search(fragment, message), f"{fragment!r} not in {message!r}"
    assert "dot_general" not in message  # never XLA's words first


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[b.id for b in BAD_INPUTS])
def test_bad_input_is_rejected_with_a_message_that_teaches(bad):
    _assert_rejected(bad)


@pytest.mark.parametrize("bad", FILE_BAD_INPUTS, ids=[b.id for b in FILE_BAD_INPUTS])
def test_bad_file_input_is_rejected(bad, tmp_path):
    _assert_rejected(bad, tmp_path)


def test_catalogue_is_large_and_distinct():
    ids = [b.id for b in BAD_INPUTS + FILE_BAD_INPUTS]
    assert len(ids) == len(set(ids)) and len(BAD_INPUTS) >= 84 and len(FILE_BAD_INPUTS) >= 14


def test_deadline_stops_a_hang():
    with pytest.raises(TimeoutError, match="not rejected within"):
        with _deadline(0.2):
            time.sleep(5)  # stands in for a call that hangs
