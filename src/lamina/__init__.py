"""lamina: neural-network layers as pure JAX functions."""

from lamina import initializers
from lamina._src.core.errors import LaminaError
from lamina._src.core.forward import forward
from lamina._src.core.layer import Layer, Params, Shape
from lamina._src.core.params import check_params, param_labels, param_shapes
from lamina._src.core.record import TraceStep
from lamina._src.core.state import has_state, init_state
from lamina._src.inference.decode import decode_step, init_cache
from lamina._src.inspection.summary import Summary, SummaryRow, summary
from lamina._src.inspection.trace import trace
from lamina._src.inspection.visualize import visualize
from lamina._src.io.checkpoint import load, load_metadata, load_model, save
from lamina._src.io.export import export, load_exported
from lamina._src.io.torch import from_torch, to_torch
from lamina._src.layers.activations import (
    ACTIVATIONS,
    Activation,
    LogSoftmax,
    Relu,
    Sigmoid,
    Softmax,
    Tanh,
)
from lamina._src.layers.attention import MultiHeadAttention
from lamina._src.layers.combinators import Concat, mlp, parallel, residual, serial
from lamina._src.layers.conv import Conv, ConvTranspose
from lamina._src.layers.decoder import TransformerDecoderLayer
from lamina._src.layers.dense import Dense, dense
from lamina._src.layers.dropout import Dropout
from lamina._src.layers.embedding import Embedding
from lamina._src.layers.encoder import TransformerEncoderLayer
from lamina._src.layers.merge import Add, Multiply
from lamina._src.layers.norms import BatchNorm, GroupNorm, LayerNorm, RMSNorm
from lamina._src.layers.pooling import AdaptiveAvgPool, AvgPool, GlobalAvgPool, MaxPool
from lamina._src.layers.precision import with_dtype
from lamina._src.layers.recurrent import GRU, LSTM
from lamina._src.layers.reshape import Flatten, Identity, Permute, Reshape, Select, Take
from lamina._src.layers.resize import Upsample
from lamina._src.layers.stack import remat, stack
from lamina._src.layers.tied import tied
from lamina._src.layers.timesteps import Timesteps
from lamina._src.layers.tokens import ClassToken, PositionEmbedding
from lamina._src.train.distributed import initialize_distributed
from lamina._src.train.fit import fit
from lamina._src.train.sharding import shard_batch, shard_params
from lamina._src.train.step import accuracy, evaluate, per_example_grads, train_step
from lamina._src.version import __version__ as __version__


def __getattr__(name):
    # lamina.testing imports chex and jax.test_util, which a user who only
    # builds and trains models should not pay for: load it on first use.
    if name == "testing":
        import importlib

        return importlib.import_module("lamina.testing")
    raise AttributeError(f"module 'lamina' has no attribute {name!r}")

__all__ = [
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
    "Dense",
    "decode_step",
    "dense",
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
    "serial",
    "Shape",
    "shard_batch",
    "shard_params",
    "Select",
    "Sigmoid",
    "Softmax",
    "stack",
    "summary",
    "Summary",
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
