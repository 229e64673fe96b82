"""lamina: neural-network layers as pure JAX functions."""

from lamina import initializers, testing
from lamina.activations import (
    ACTIVATIONS,
    Activation,
    LogSoftmax,
    Relu,
    Sigmoid,
    Softmax,
    Tanh,
)
from lamina.checkpoint import load, load_metadata, save
from lamina.combinators import Concat, mlp, parallel, residual, serial
from lamina.dense import Dense, dense
from lamina.dropout import Dropout
from lamina.export import export, load_exported
from lamina.forward import forward, trace
from lamina.layer import Layer, Params, Shape, TraceStep
from lamina.normalization import LayerNorm
from lamina.params import check_params, param_shapes
from lamina.precision import with_dtype
from lamina.reshape import Flatten, Identity
from lamina.sharding import shard_batch, shard_params
from lamina.summary import Summary, SummaryRow, summary
from lamina.torch_interop import from_torch, to_torch
from lamina.train import accuracy, evaluate, fit, per_example_grads, train_step
from lamina.visualize import visualize

__version__ = "0.1.0"

__all__ = [
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
