"""lamina: neural-network layers as pure JAX functions."""

from lamina import initializers
from lamina.activations import (
    ACTIVATIONS,
    Activation,
    LogSoftmax,
    Relu,
    Sigmoid,
    Softmax,
    Tanh,
)
from lamina.combinators import Concat, mlp, parallel, residual, serial
from lamina.dense import Dense, dense
from lamina.dropout import Dropout
from lamina.forward import forward, trace
from lamina.layer import Layer, Params, Shape, TraceStep
from lamina.normalization import LayerNorm
from lamina.params import check_params, param_shapes
from lamina.precision import with_dtype
from lamina.reshape import Flatten, Identity
from lamina.sharding import shard_batch, shard_params
from lamina.train import accuracy, evaluate, fit, per_example_grads, train_step

__version__ = "0.1.0"

__all__ = [
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
