"""The public surface is pinned: any change to it is a visible diff here."""

import lamina as lm

PUBLIC = [
    "ACTIVATIONS",
    "Activation",
    "Concat",
    "Dense",
    "Dropout",
    "Flatten",
    "Identity",
    "Layer",
    "LayerNorm",
    "LogSoftmax",
    "Params",
    "Relu",
    "Shape",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "TraceStep",
    "accuracy",
    "check_params",
    "dense",
    "evaluate",
    "fit",
    "forward",
    "initializers",
    "mlp",
    "param_shapes",
    "parallel",
    "per_example_grads",
    "residual",
    "serial",
    "shard_batch",
    "shard_params",
    "trace",
    "train_step",
    "with_dtype",
]


def test_all_is_pinned():
    assert sorted(lm.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert hasattr(lm, name), name


def test_layer_is_a_plain_named_tuple():
    layer = lm.Dense(3)
    init, apply, name, _ = layer
    assert (init, apply, name) == (layer.init, layer.apply, layer.name)
    assert repr(layer) == "Layer(Dense(3))"


def test_py_typed_ships():
    import pathlib

    assert (pathlib.Path(lm.__file__).parent / "py.typed").exists()
