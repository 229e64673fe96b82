"""The public surface is pinned: any change to it is a visible diff here."""

import lamina as lm

PUBLIC = [
    "accuracy",
    "Activation",
    "ACTIVATIONS",
    "check_params",
    "Concat",
    "Dense",
    "dense",
    "Dropout",
    "evaluate",
    "export",
    "fit",
    "Flatten",
    "forward",
    "from_torch",
    "Identity",
    "initializers",
    "Layer",
    "LayerNorm",
    "load",
    "load_exported",
    "load_metadata",
    "LogSoftmax",
    "mlp",
    "parallel",
    "param_shapes",
    "Params",
    "per_example_grads",
    "Relu",
    "residual",
    "save",
    "serial",
    "Shape",
    "shard_batch",
    "shard_params",
    "Sigmoid",
    "Softmax",
    "Summary",
    "summary",
    "SummaryRow",
    "Tanh",
    "to_torch",
    "trace",
    "testing",
    "TraceStep",
    "train_step",
    "visualize",
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
