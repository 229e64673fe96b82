"""The public surface is pinned: any change to it is a visible diff here."""

import lamina as lm

PUBLIC = [
    "accuracy",
    "Activation",
    "ACTIVATIONS",
    "AdaptiveAvgPool",
    "Add",
    "AvgPool",
    "BatchNorm",
    "check_params",
    "ClassToken",
    "Concat",
    "Conv",
    "ConvTranspose",
    "decode_step",
    "dense",
    "Dense",
    "Dropout",
    "Embedding",
    "evaluate",
    "export",
    "fit",
    "Flatten",
    "forward",
    "from_torch",
    "GlobalAvgPool",
    "GroupNorm",
    "GRU",
    "has_state",
    "Identity",
    "init_cache",
    "init_state",
    "initialize_distributed",
    "initializers",
    "LaminaError",
    "Layer",
    "LayerNorm",
    "load",
    "load_exported",
    "load_metadata",
    "load_model",
    "LogSoftmax",
    "LSTM",
    "MaxPool",
    "mlp",
    "MultiHeadAttention",
    "Multiply",
    "parallel",
    "param_labels",
    "param_shapes",
    "Params",
    "per_example_grads",
    "Permute",
    "PositionEmbedding",
    "Relu",
    "remat",
    "Reshape",
    "residual",
    "RMSNorm",
    "save",
    "Select",
    "serial",
    "Shape",
    "shard_batch",
    "shard_params",
    "Sigmoid",
    "Softmax",
    "stack",
    "Summary",
    "summary",
    "SummaryRow",
    "Take",
    "Tanh",
    "testing",
    "tied",
    "Timesteps",
    "to_torch",
    "trace",
    "TraceStep",
    "train_step",
    "TransformerDecoderLayer",
    "TransformerEncoderLayer",
    "Upsample",
    "visualize",
    "with_dtype",
]


def test_all_is_pinned():
    assert sorted(lm.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert hasattr(lm, name), name


def test_user_layer_keeps_its_functions_and_name():
    def init(key, shape):
        return shape, ()

    def apply(params, x, *, key=None):
        return x

    layer = lm.Layer(init, apply, "Mine")
    assert (layer.init, layer.apply, layer.name) == (init, apply, "Mine")
    assert repr(layer) == "Layer(Mine)"
    assert layer == lm.Layer(init, apply, "Mine") and layer != lm.Layer(init, apply, "Other")


def test_py_typed_ships():
    import pathlib

    assert (pathlib.Path(lm.__file__).parent / "py.typed").exists()
