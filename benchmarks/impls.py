"""The same MLP in each library, built from the same NumPy weights.

Every implementation exposes the four workloads the benchmark times:
`forward(xs)`, `train_step()` (one Adam step on a fixed batch, state kept
inside), `per_example_grads()` (one gradient per example of a fixed batch),
and `prepare(...)` to set the arrays up first. Hidden layers use ReLU, the
output is logits, the loss is softmax cross-entropy with integer labels.

`bench.py` builds them all from one set of device arrays (`on_device`): the
implementations that keep the (out, in) layout then read the very same
weight and input buffers, so none is luckier than another in where its
buffers landed in memory (that alone moved a batch-1 forward by +-8% here).
The (in, out) layouts hold transposed copies; PyTorch holds its own.

Libraries other than lamina and JAX are optional: `available()` lists the
ones that import.
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

LR = 1e-3


def numpy_forward(weights, xs):
    """The reference: float64 NumPy, independent of every library timed."""
    h = np.asarray(xs, np.float64)
    for i, (W, b) in enumerate(weights):
        h = h @ W.astype(np.float64).T + b
        if i < len(weights) - 1:
            h = np.maximum(h, 0)
    return h


def make_weights(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (
            rng.uniform(-1, 1, (o, i)).astype(np.float32) / np.sqrt(i),
            rng.uniform(-1, 1, (o,)).astype(np.float32) / np.sqrt(i),
        )
        for i, o in zip(sizes[:-1], sizes[1:])
    ]


def on_device(weights):
    """The NumPy weights as JAX arrays, to share between implementations."""
    return [(jnp.asarray(W), jnp.asarray(b)) for W, b in weights]


def _xent(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


class JaxImpl:
    """A base for the JAX libraries: subclasses give params and a batched apply."""

    name = "?"

    def __init__(self, weights):
        self.weights = weights
        self.params = self.make_params(weights)
        self.opt = optax.adam(LR)
        apply = self.batched_apply
        self._fwd = jax.jit(apply)

        def loss(params, xs, ys):
            return self.batch_loss(apply(params, xs), ys)

        def step(params, opt_state, xs, ys):
            # value_and_grad: a training loop reports its loss, as lm.train_step does.
            value, grads = jax.value_and_grad(loss)(params, xs, ys)
            updates, opt_state = self.opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value

        def one(params, x, y):
            return loss(params, x[None], y[None])

        self._step = jax.jit(step, donate_argnums=(0, 1))
        self._peg = jax.jit(jax.vmap(jax.grad(one), in_axes=(None, 0, 0)))

    @staticmethod
    def batch_loss(outputs, targets):
        """The training loss over a batch: mean softmax cross-entropy."""
        return jnp.mean(_xent(outputs, targets))

    def prepare(self, xs, ys):
        self.xs, self.ys = jnp.asarray(xs), jnp.asarray(ys)
        self.state = (jax.tree.map(jnp.copy, self.params), self.opt.init(self.params))

    def forward(self, xs):
        return self._fwd(self.params, xs)

    def train_step(self):
        params, opt_state, value = self._step(*self.state, self.xs, self.ys)
        self.state = (params, opt_state)
        return value

    def per_example_grads(self):
        return self._peg(self.params, self.xs, self.ys)

    def to_device(self, xs):
        return jnp.asarray(xs)


class HandWritten(JaxImpl):
    """The floor: plain jax.jit over a list of (W, b) with lax.dot_general."""

    name = "jax (hand-written)"

    def make_params(self, weights):
        return [(jnp.asarray(W), jnp.asarray(b)) for W, b in weights]

    @staticmethod
    def batched_apply(params, xs):
        for i, (W, b) in enumerate(params):
            xs = lax.dot_general(xs, W, (((1,), (1,)), ((), ()))) + b
            if i < len(params) - 1:
                xs = jax.nn.relu(xs)
        return xs


class Lamina(JaxImpl):
    name = "lamina"

    loss_fn = staticmethod(_xent)  # per example, as lm.train_step takes it

    def __init__(self, weights):
        import lamina as lm

        self.lm = lm
        self.model = self.make_model(weights)
        super().__init__(weights)
        # lamina's own entry points, not the base class's hand-made ones.
        self._fwd = lm.forward(self.model)
        self._lm_step = lm.train_step(self.model, self.loss_fn, self.opt)
        self._peg = lm.per_example_grads(self.model, self.loss_fn)

    def make_model(self, weights):
        return self.lm.mlp([W.shape[0] for W, _ in weights])

    def make_params(self, weights):
        return tuple({"W": jnp.asarray(W), "b": jnp.asarray(b)} for W, b in weights)

    def batched_apply(self, params, xs):
        return jax.vmap(self.model.apply, in_axes=(None, 0))(params, xs)

    def train_step(self):
        params, opt_state = self.state
        params, opt_state, metrics = self._lm_step(params, opt_state, (self.xs, self.ys))
        self.state = (params, opt_state)
        return metrics["loss"]

    def per_example_grads(self):
        return self._peg(self.params, (self.xs, self.ys))


class Stax(JaxImpl):
    """jax.example_libraries.stax: (in, out) weights, W stored transposed."""

    name = "stax"

    def __init__(self, weights):
        from jax.example_libraries import stax

        layers = []
        for i, (W, _) in enumerate(weights):
            layers.append(stax.Dense(W.shape[0]))
            if i < len(weights) - 1:
                layers.append(stax.Relu)
        _, self.stax_apply = stax.serial(*layers)
        self.n_layers = len(layers)
        super().__init__(weights)

    def make_params(self, weights):
        params = []
        for i, (W, b) in enumerate(weights):
            params.append((jnp.asarray(W.T), jnp.asarray(b)))
            if i < len(weights) - 1:
                params.append(())
        return params

    def batched_apply(self, params, xs):
        return self.stax_apply(params, xs)


class FlaxLinen(JaxImpl):
    name = "flax.linen"

    def __init__(self, weights):
        import flax.linen as nn

        sizes = [W.shape[0] for W, _ in weights]

        class MLP(nn.Module):
            @nn.compact
            def __call__(self, x):
                for i, size in enumerate(sizes):
                    x = nn.Dense(size, name=f"Dense_{i}")(x)
                    if i < len(sizes) - 1:
                        x = nn.relu(x)
                return x

        self.module = MLP()
        super().__init__(weights)

    def make_params(self, weights):
        return {
            "params": {
                f"Dense_{i}": {"kernel": jnp.asarray(W.T), "bias": jnp.asarray(b)}
                for i, (W, b) in enumerate(weights)
            }
        }

    def batched_apply(self, params, xs):
        return self.module.apply(params, xs)


class Haiku(JaxImpl):
    name = "haiku"

    def __init__(self, weights):
        import haiku as hk

        sizes = [W.shape[0] for W, _ in weights]

        def net(x):
            return hk.nets.MLP(sizes, activation=jax.nn.relu, name="mlp")(x)

        self.transformed = hk.without_apply_rng(hk.transform(net))
        super().__init__(weights)

    def make_params(self, weights):
        return {
            f"mlp/~/linear_{i}": {"w": jnp.asarray(W.T), "b": jnp.asarray(b)}
            for i, (W, b) in enumerate(weights)
        }

    def batched_apply(self, params, xs):
        return self.transformed.apply(params, xs)


class Equinox(JaxImpl):
    """Equinox keeps (out, in) weights like lamina; timed through eqx.filter_jit."""

    name = "equinox (filter_jit)"

    def __init__(self, weights):
        import equinox as eqx

        self.eqx = eqx
        self.weights = weights
        self.params = self.make_model(weights)
        self.opt = optax.adam(LR)

        def loss(model, xs, ys):
            return self.batch_loss(jax.vmap(model)(xs), ys)

        @eqx.filter_jit(donate="all")
        def step(model, opt_state, xs, ys):
            value, grads = eqx.filter_value_and_grad(loss)(model, xs, ys)
            updates, opt_state = self.opt.update(grads, opt_state, eqx.filter(model, eqx.is_array))
            return eqx.apply_updates(model, updates), opt_state, value

        @eqx.filter_jit
        def peg(model, xs, ys):
            return jax.vmap(lambda x, y: eqx.filter_grad(loss)(model, x[None], y[None]))(xs, ys)

        self._fwd = eqx.filter_jit(lambda model, xs: jax.vmap(model)(xs))
        self._step, self._peg = step, peg

    def make_model(self, weights):
        eqx = self.eqx
        sizes = [weights[0][0].shape[1]] + [W.shape[0] for W, _ in weights]
        mlp = eqx.nn.MLP(sizes[0], sizes[-1], sizes[1], len(weights) - 1,
                         activation=jax.nn.relu, key=jax.random.key(0))
        if len(set(sizes[1:-1])) > 1:
            raise ValueError("eqx.nn.MLP needs equal hidden widths")
        for i, (W, b) in enumerate(weights):
            mlp = eqx.tree_at(lambda m: (m.layers[i].weight, m.layers[i].bias), mlp,
                              (jnp.asarray(W), jnp.asarray(b)))
        return mlp

    def prepare(self, xs, ys):
        self.xs, self.ys = jnp.asarray(xs), jnp.asarray(ys)
        model = jax.tree.map(lambda a: jnp.copy(a) if self.eqx.is_array(a) else a, self.params)
        self.state = (model, self.opt.init(self.eqx.filter(model, self.eqx.is_array)))


class FlaxNNX(JaxImpl):
    """Flax NNX modules, timed through nnx.jit (its recommended entry point)."""

    name = "flax.nnx (nnx.jit)"

    def __init__(self, weights):
        from flax import nnx

        self.nnx = nnx
        self.weights = weights
        layers = []
        for W, b in weights:
            layer = nnx.Linear(W.shape[1], W.shape[0], rngs=nnx.Rngs(0))
            layer.kernel[...] = jnp.asarray(W.T)
            layer.bias[...] = jnp.asarray(b)
            layers.append(layer)

        class MLP(nnx.Module):
            def __init__(self, layers):
                self.layers = nnx.List(layers) if hasattr(nnx, "List") else layers

            def __call__(self, x):
                for i, layer in enumerate(self.layers):
                    x = layer(x)
                    if i < len(self.layers) - 1:
                        x = jax.nn.relu(x)
                return x

        self.model = MLP(layers)
        self._fwd = nnx.jit(lambda model, xs: model(xs))

        def loss(model, xs, ys):
            return jnp.mean(_xent(model(xs), ys))

        @nnx.jit
        def step(model, optimizer, xs, ys):
            value, grads = nnx.value_and_grad(loss)(model, xs, ys)
            optimizer.update(model, grads) if _nnx_update_takes_model(optimizer) else optimizer.update(grads)
            return value

        @nnx.jit
        def peg(model, xs, ys):
            graphdef, state = nnx.split(model)

            def one(state, x, y):
                return loss(nnx.merge(graphdef, state), x[None], y[None])

            return jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(state, xs, ys)

        self._step, self._peg = step, peg

    def prepare(self, xs, ys):
        nnx = self.nnx
        self.xs, self.ys = jnp.asarray(xs), jnp.asarray(ys)
        self.train_model = nnx.clone(self.model)
        try:
            self.optimizer = nnx.Optimizer(self.train_model, optax.adam(LR), wrt=nnx.Param)
        except TypeError:
            self.optimizer = nnx.Optimizer(self.train_model, optax.adam(LR))

    def forward(self, xs):
        return self._fwd(self.model, xs)

    def train_step(self):
        return self._step(self.train_model, self.optimizer, self.xs, self.ys)

    def per_example_grads(self):
        return self._peg(self.model, self.xs, self.ys)


def _nnx_update_takes_model(optimizer):
    import inspect

    return "model" in inspect.signature(optimizer.update).parameters


class Torch:
    """PyTorch CPU eager, the usual way: nn.Sequential, torch.optim.Adam, torch.func."""

    name = "pytorch (eager)"

    def __init__(self, weights):
        import torch

        self.torch = torch
        self.model = self.make_module(weights)

    def make_module(self, weights):
        torch = self.torch
        layers = []
        for i, (W, b) in enumerate(weights):
            linear = torch.nn.Linear(W.shape[1], W.shape[0])
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(np.array(W)))
                linear.bias.copy_(torch.from_numpy(np.array(b)))
            layers.append(linear)
            if i < len(weights) - 1:
                layers.append(torch.nn.ReLU())
        return torch.nn.Sequential(*layers)

    def batch_loss(self, outputs, targets):
        return self.torch.nn.functional.cross_entropy(outputs, targets)

    def to_device(self, xs):
        return self.torch.from_numpy(np.array(xs, np.float32))  # its own, writable copy

    def to_targets(self, ys):
        return self.torch.from_numpy(np.asarray(ys, np.int64))  # class labels

    def prepare(self, xs, ys):
        import copy

        torch = self.torch
        self.xs, self.ys = self.to_device(xs), self.to_targets(ys)
        self.train_model = copy.deepcopy(self.model)
        self.optimizer = torch.optim.Adam(self.train_model.parameters(), lr=LR)
        params = {k: v.detach() for k, v in self.model.named_parameters()}

        def one(params, x, y):
            out = torch.func.functional_call(self.model, params, (x[None],))
            return torch.nn.functional.cross_entropy(out, y[None])

        self._peg = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))
        self._params = params

    def forward(self, xs):
        with self.torch.inference_mode():
            return self.model(xs)

    def train_step(self):
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.batch_loss(self.train_model(self.xs), self.ys)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def per_example_grads(self):
        return self._peg(self._params, self.xs, self.ys)


ALL = {
    "jax": (HandWritten, None),
    "lamina": (Lamina, None),
    "stax": (Stax, None),
    "flax.linen": (FlaxLinen, "flax"),
    "flax.nnx": (FlaxNNX, "flax"),
    "equinox": (Equinox, "equinox"),
    "haiku": (Haiku, "haiku"),
    "torch": (Torch, "torch"),
}


def available():
    """Keys of ALL whose library imports here."""
    return [k for k, (_, module) in ALL.items() if module is None or importlib.util.find_spec(module)]


def block(value):
    """Waits for a result: jax arrays asynchronously dispatched, torch tensors as they are."""
    return jax.block_until_ready(value) if not hasattr(value, "detach") else value
