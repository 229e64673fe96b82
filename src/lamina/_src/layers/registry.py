"""Every public layer of lamina, each with examples: the one list the rest reads.

`LAYERS` is what a checkpoint may name (`lm.load_model` builds nothing
else), and `EXAMPLES` is what the coverage tests run through every part of
lamina: `check_layer`, equality and pickling, `save(model=)`/`load_model`,
`summary`, `trace`, and the PyTorch round trip where torch has a twin. A
test fails when a layer class is missing here, so adding a layer means
adding it to this file (see CONTRIBUTING.md).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from lamina._src.core.builtin import Builtin
from lamina._src.layers.activations import Activation
from lamina._src.layers.attention import MultiHeadAttention
from lamina._src.layers.combinators import Concat, parallel, residual, serial
from lamina._src.layers.conv import Conv, ConvTranspose
from lamina._src.layers.decoder import TransformerDecoderLayer
from lamina._src.layers.dense import Dense
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


class Example(NamedTuple):
    """A layer and an input it takes: one example's shape and dtype."""

    layer: Builtin
    input_shape: Any
    input_dtype: Any = jnp.float32
    int_high: int = 2  # integer inputs are drawn from [0, int_high)


LAYERS: dict[str, type[Builtin]] = {cls.__name__: cls for cls in (
    Activation, AdaptiveAvgPool, Add, AvgPool, BatchNorm, ClassToken, Concat, Conv,
    ConvTranspose, Dense, Dropout, Embedding, Flatten, GlobalAvgPool, GroupNorm, GRU, Identity,
    LayerNorm, LSTM, MaxPool, MultiHeadAttention, Multiply, parallel, Permute, PositionEmbedding,
    remat, Reshape, residual, RMSNorm, Select, serial, stack, Take, tied, Timesteps,
    TransformerDecoderLayer,
    TransformerEncoderLayer, Upsample, with_dtype,
)}
"""Public name -> class, for every layer lamina can rebuild from a file."""

EXAMPLES: dict[str, tuple[Example, ...]] = {
    "Activation": (Example(Activation("tanh"), (4,)), Example(Activation("softmax"), (2, 3))),
    "AdaptiveAvgPool": (Example(AdaptiveAvgPool(3), (2, 7, 5)), Example(AdaptiveAvgPool((4,)), (2, 6))),
    "Add": (Example(Add(), ((3, 4), (3, 4))), Example(Add(), ((2, 3, 3), (2, 1, 1), (2, 3, 3)))),
    "AvgPool": (Example(AvgPool(2), (2, 6, 6)), Example(AvgPool(3, stride=2, padding=1), (2, 7)),
                Example(AvgPool(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
                        (2, 6, 5))),
    "BatchNorm": (Example(BatchNorm(), (3, 4)), Example(BatchNorm(momentum=0.5), (5,))),
    "ClassToken": (Example(ClassToken(), (4, 6)), Example(ClassToken(), (2, 3, 4))),
    "Concat": (Example(Concat(), ((3,), (5,))), Example(Concat(axis=0), ((2, 3), (1, 3)))),
    "Conv": (Example(Conv(4, 3, padding=1, act="relu"), (2, 6, 6)),
             Example(Conv(4, (3,), stride=2, groups=2), (2, 9)),
             Example(Conv(2, 2, use_bias=False), (1, 3, 3, 3)),
             Example(Conv(3, 3, padding=1, padding_mode="reflect"), (2, 5, 4))),
    "ConvTranspose": (Example(ConvTranspose(3, 2, stride=2), (2, 4, 4)),
                      Example(ConvTranspose(2, 3, padding=1, output_padding=1, stride=2), (4, 5))),
    "Dense": (Example(Dense(3, act="relu"), (4,)), Example(Dense(2, use_bias=False), (2, 3))),
    "Dropout": (Example(Dropout(0.5), (8,)),),
    "Embedding": (Example(Embedding(10, 4), (5,), jnp.int32, 10),),
    "Flatten": (Example(Flatten(), (2, 3, 2)),),
    "GlobalAvgPool": (Example(GlobalAvgPool(), (3, 4, 4)),),
    "GroupNorm": (Example(GroupNorm(2), (4, 3, 3)),),
    "GRU": (Example(GRU(5), (4, 3)), Example(GRU(3, num_layers=2, bidirectional=True), (4, 2))),
    "Identity": (Example(Identity(), (3,)), Example(Identity(), ((3,), (2, 2)))),
    "LayerNorm": (Example(LayerNorm(), (4,)), Example(LayerNorm(eps=1e-3), (2, 5))),
    "LSTM": (Example(LSTM(5), (4, 3)), Example(LSTM(3, num_layers=2, bidirectional=True), (4, 2))),
    "MaxPool": (Example(MaxPool(2), (2, 6, 6)), Example(MaxPool(3, stride=1, padding=1), (2, 5)),
                Example(MaxPool(2, ceil_mode=True), (2, 5, 5))),
    "MultiHeadAttention": (Example(MultiHeadAttention(2), (5, 8)),
                           Example(MultiHeadAttention(4, causal=True, use_bias=False), (3, 8))),
    "Multiply": (Example(Multiply(), ((4,), (4,))),),
    "parallel": (Example(parallel(Dense(3), Identity()), (4,)),),
    "Permute": (Example(Permute((1, 2, 0)), (2, 3, 4)),),
    "PositionEmbedding": (Example(PositionEmbedding(), (5, 4)),
                          Example(PositionEmbedding(max_length=8), (2, 6, 4))),
    # Wrappers first around a layer with state: the state must reach it.
    "remat": (Example(remat(serial(Dense(4), BatchNorm())), (3,)),
              Example(remat(Dense(3, act="tanh")), (4,))),
    "residual": (Example(residual(serial(Dense(4), BatchNorm())), (4,)),
                 Example(residual(Dense(4, act="tanh")), (4,))),
    "Reshape": (Example(Reshape((2, -1)), (3, 4)), Example(Reshape((4, 1, 1)), (4,))),
    "RMSNorm": (Example(RMSNorm(), (6,)),),
    "Select": (Example(Select(1), ((3,), (2, 2))), Example(Select(-2), ((4,), (1,), (2,)))),
    "serial": (Example(serial(Dense(4, act="relu"), Dropout(0.5), Dense(2)), (3,)),
               Example(serial(Conv(3, 3, padding=1), BatchNorm(), MaxPool(2), Flatten(),
                              Dense(2)), (2, 4, 4))),
    "stack": (Example(stack(serial(Dense(3), BatchNorm()), 2), (3,)),
              Example(stack(residual(Dense(3, act="tanh")), 3), (3,))),
    "Take": (Example(Take(0), (5, 4)), Example(Take(-1, axis=1), (2, 3, 4))),
    "tied": (Example(tied(Embedding(12, 8), TransformerEncoderLayer(2, 16, causal=True)), (5,),
                     jnp.int32, 12),
             Example(tied(Embedding(6, 4)), (3,), jnp.int32, 6)),
    "Timesteps": (Example(Timesteps(8), ()),
                  Example(Timesteps(5, flip_sin_to_cos=True, downscale_freq_shift=0), (3,))),
    "TransformerDecoderLayer": (
        Example(TransformerDecoderLayer(2, 16, causal=True), {"tgt": (3, 8), "memory": (4, 8)}),
        Example(TransformerDecoderLayer(2, 8, act="gelu", norm_first=False),
                {"tgt": (2, 4), "memory": (3, 4)}),
    ),
    "TransformerEncoderLayer": (Example(TransformerEncoderLayer(2, 16), (5, 8)),
                                Example(TransformerEncoderLayer(2, 8, act="gelu", norm_first=False,
                                                                causal=True), (3, 4))),
    "Upsample": (Example(Upsample(2, mode="bilinear"), (2, 3, 4)), Example(Upsample(1.5), (2, 5)),
                 Example(Upsample(size=(4, 3, 5), mode="trilinear"), (1, 2, 3, 2))),
    "with_dtype": (Example(with_dtype(serial(Dense(4), BatchNorm()), jnp.float32), (3,)),
                   Example(with_dtype(Dense(3), jnp.float32), (4,))),
}
"""Public name -> examples covering its kinds (with and without state, bias, ...).

The first of each is the one `check_layer` runs on in `tests/test_registry.py`
(the others there go through every other test; each layer's own test file
runs `check_layer` over more configurations)."""
