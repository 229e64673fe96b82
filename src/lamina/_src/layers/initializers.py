"""Weight initializers as values, for lamina's PyTorch layouts.

lamina stores a Dense weight as `(out, in)` and a Conv weight as
`(out, in // groups, *kernel)`. Its initializers read the fans from those
axes: fan_in = in * prod(kernel), fan_out = out * prod(kernel). Each is a
small frozen dataclass (`VarianceScaling`, `Uniform`, `Normal`, `Constant`)
deriving from `Initializer`, so a layer that holds one stays a value: equal
configuration means equal and same hash, it pickles, and its fields are plain
JSON values from which it can be rebuilt.

`jax.nn.initializers` and Flax's read fan-in from axis -2 and fan-out from
axis -1, the `(*kernel, in, out)` layout of Flax and stax, which in our layout
would be `in` and `out` swapped. `init_weight` is what layers call: it hands
lamina's initializers the torch shape and any other callable the Flax shape,
transposing the result, so both give the variance their users expect.

`torch_linear()` is `Dense`'s default: it draws from the same distribution as
`torch.nn.Linear` (uniform in +-1/sqrt(fan_in)). The `*_normal` variants use a
plain normal, as PyTorch's `xavier_normal_`/`kaiming_normal_` do.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.nn import initializers as _jinit
from jax.typing import DTypeLike

from lamina._src.core.errors import layer_error

_MODES = ("fan_in", "fan_out", "fan_avg")
_DISTRIBUTIONS = ("normal", "truncated_normal", "uniform")


class Initializer:
    """Base class of lamina's initializers: `init(key, shape, dtype) -> array`.

    A subclass is a frozen dataclass whose fields are plain JSON values (int,
    float, str, bool) and whose `__call__` takes `shape` in lamina's layout
    `(out, in, *kernel)`; `init_weight` passes it that shape unchanged.

    Example:
      >>> import jax, lamina as lm
      >>> init = lm.initializers.he_normal()
      >>> isinstance(init, lm.initializers.Initializer)
      True
      >>> init(jax.random.key(0), (3, 2)).shape
      (3, 2)
    """

    __slots__ = ()

    def __call__(
        self, key: jax.Array, shape: Sequence[int], dtype: DTypeLike = jnp.float32
    ) -> jax.Array:
        raise NotImplementedError(f"{type(self).__name__} must define __call__")


def _real(owner: str, name: str, value: Any, minimum: str = "") -> float:
    """Returns `value` as a finite float, or raises naming the initializer.

    `minimum` is "", "> 0" or ">= 0": the bound the value must also meet.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise layer_error(
            f"lm.initializers.{owner}",
            f"{name} must be a real number, got {type(value).__name__} {value!r}",
            TypeError,
        )
    value = float(value)
    low = {"": False, "> 0": value <= 0, ">= 0": value < 0}[minimum]
    if not math.isfinite(value) or low:
        wanted = f"finite and {minimum}" if minimum else "finite"
        raise layer_error(f"lm.initializers.{owner}", f"{name} must be {wanted}, got {value!r}")
    return value


def _choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise layer_error(
            f"lm.initializers.{owner}",
            f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}",
        )


_BLOCK = 1 << 16
"""uint32 words per compiled draw: every draw of every shape runs this one program."""


@jax.jit
def _block_bits(key: jax.Array) -> jax.Array:
    return jax.random.bits(key, (_BLOCK,), jnp.uint32)


def _uniforms(key: Any, shape: Sequence[int], dtype: Any) -> Optional[np.ndarray]:
    """`prod(shape)` float64 draws in the open interval (0, 1), made from `key` in NumPy.

    Eager `jax.random` compiles one program per shape drawn, so a model with
    60 layers of distinct widths compiled 60 times to initialise (52 s on 2
    cores). Here every draw is blocks of one fixed shape (one compile per
    process), cut to size and transformed on the host: the same
    distributions, other values than `jax.random` would give. `None` when
    `key` is traced (init under `jit` or `vmap`, e.g. `lm.stack`) or the
    dtype is not a real float: the caller draws with `jax.random` then.
    """
    if isinstance(key, jax.core.Tracer) or not jnp.issubdtype(dtype, jnp.floating):
        return None
    n = math.prod(shape)
    blocks = [np.asarray(_block_bits(jax.random.fold_in(key, i))) for i in range(-(-n // _BLOCK))]
    bits = np.concatenate(blocks)[:n] if blocks else np.zeros(0, np.uint32)
    return (bits.astype(np.float64) + 0.5) / 2.0**32


def _on_device(values: np.ndarray, shape: Sequence[int], dtype: Any) -> jax.Array:
    # device_put compiles nothing, where a jnp cast or reshape would, per shape.
    return jax.device_put(np.asarray(values).reshape(tuple(shape)).astype(jnp.dtype(dtype)))


def _normal_from(u: np.ndarray, low: float = -math.inf, high: float = math.inf) -> np.ndarray:
    """Standard normal draws (cut to [low, high]) from uniform ones, by the inverse CDF."""
    from scipy.special import ndtr, ndtri  # scipy comes with jax

    if math.isinf(low) and math.isinf(high):
        return ndtri(u)
    a, b = ndtr(low), ndtr(high)
    return ndtri(a + u * (b - a))


@dataclasses.dataclass(frozen=True)
class VarianceScaling(Initializer):
    """Zero-mean draws with variance `scale / n`, n read from `(out, in, *kernel)`.

    `n` is fan_in = in * prod(kernel), fan_out = out * prod(kernel) or their
    mean, for `mode` "fan_in", "fan_out" or "fan_avg". The distribution is
    `jax.nn.initializers.variance_scaling`'s with `in_axis=1, out_axis=0`
    (drawn without a compile per shape: see `init_weight`).

    Attributes:
      scale: the variance times `n`, > 0 (2.0 for He, 1.0 for LeCun/Glorot).
      mode: "fan_in", "fan_out" or "fan_avg".
      distribution: "normal", "truncated_normal" (cut at 2 sd, rescaled) or
        "uniform".

    Example:
      >>> import jax, lamina as lm
      >>> init = lm.initializers.VarianceScaling(2.0, "fan_in", "normal")
      >>> init == lm.initializers.he_normal()
      True
      >>> init(jax.random.key(0), (32, 16, 3, 3)).shape  # fan_in 16 * 9
      (32, 16, 3, 3)
    """

    scale: float
    mode: str
    distribution: str

    def __post_init__(self):
        object.__setattr__(
            self, "scale", _real("VarianceScaling", "scale", self.scale, "> 0")
        )
        _choice("VarianceScaling", "mode", self.mode, _MODES)
        _choice("VarianceScaling", "distribution", self.distribution, _DISTRIBUTIONS)

    def __call__(self, key, shape, dtype=jnp.float32):
        shape = tuple(shape)
        if len(shape) < 2:
            raise layer_error(
                f"lm.initializers.{self!r}",
                f"variance scaling reads fan-in and fan-out from an (out, in) shape "
                f"(or (out, in, *kernel) for a convolution), got shape {shape}; use "
                f"uniform(), normal() or zeros for biases",
            )
        u = _uniforms(key, shape, dtype)
        if u is None:
            init = _jinit.variance_scaling(
                self.scale, self.mode, self.distribution, in_axis=1, out_axis=0
            )
            return init(key, shape, dtype)
        receptive = math.prod(shape[2:])
        fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        variance = self.scale / max(1.0, n)
        if self.distribution == "uniform":
            limit = math.sqrt(3 * variance)
            return _on_device(limit * (2 * u - 1), shape, dtype)
        if self.distribution == "normal":
            return _on_device(math.sqrt(variance) * _normal_from(u), shape, dtype)
        # cut at 2 sd, rescaled to the variance asked (as jax.nn.initializers does)
        sd = math.sqrt(variance) / 0.87962566103423978
        return _on_device(sd * _normal_from(u, -2.0, 2.0), shape, dtype)


@dataclasses.dataclass(frozen=True)
class Uniform(Initializer):
    """Uniform draws in `[-bound, bound)`, on any shape.

    Attributes:
      bound: half the width of the interval, >= 0.

    Example:
      >>> import jax, lamina as lm
      >>> b = lm.initializers.Uniform(0.25)(jax.random.key(0), (1000,))
      >>> bool(abs(b).max() <= 0.25)
      True
    """

    bound: float

    def __post_init__(self):
        object.__setattr__(self, "bound", _real("Uniform", "bound", self.bound, ">= 0"))

    def __call__(self, key, shape, dtype=jnp.float32):
        u = _uniforms(key, shape, dtype)
        if u is None:
            return jax.random.uniform(key, tuple(shape), dtype, -self.bound, self.bound)
        return _on_device(self.bound * (2 * u - 1), shape, dtype)


@dataclasses.dataclass(frozen=True)
class Normal(Initializer):
    """Normal draws with mean 0 and standard deviation `stddev`, on any shape.

    Attributes:
      stddev: the standard deviation, >= 0.

    Example:
      >>> import jax, lamina as lm
      >>> lm.initializers.Normal(0.02)(jax.random.key(0), (2, 3)).shape
      (2, 3)
    """

    stddev: float

    def __post_init__(self):
        object.__setattr__(self, "stddev", _real("Normal", "stddev", self.stddev, ">= 0"))

    def __call__(self, key, shape, dtype=jnp.float32):
        u = _uniforms(key, shape, dtype)
        if u is None:
            return jax.random.normal(key, tuple(shape), dtype) * jnp.asarray(self.stddev, dtype)
        return _on_device(self.stddev * _normal_from(u), shape, dtype)


@dataclasses.dataclass(frozen=True)
class Constant(Initializer):
    """Every entry equal to `value`; the key is ignored.

    Attributes:
      value: the finite number to fill with.

    Example:
      >>> import jax, lamina as lm
      >>> lm.initializers.Constant(0.5)(jax.random.key(0), (3,)).tolist()
      [0.5, 0.5, 0.5]
    """

    value: float

    def __post_init__(self):
        object.__setattr__(self, "value", _real("Constant", "value", self.value))

    def __call__(self, key, shape, dtype=jnp.float32):
        if isinstance(key, jax.core.Tracer):
            return jnp.full(tuple(shape), self.value, dtype)
        return _on_device(np.full(tuple(shape), self.value), shape, dtype)


zeros = Constant(0.0)
ones = Constant(1.0)


def init_weight(
    initializer: Callable[..., jax.Array],
    key: jax.Array,
    shape: Sequence[int],
    dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """Creates a weight of torch layout `shape` with any kind of initializer.

    A lamina `Initializer` gets `shape = (out, in, *kernel)` as is. Any other
    callable, e.g. from `jax.nn.initializers` or Flax, expects the
    `(*kernel, in, out)` layout of Flax and stax: it is called with that shape
    and its result transposed to `(out, in, *kernel)`, so `he_normal()` from
    JAX gives variance 2/fan_in here too. A shape of rank < 2 (a bias) goes to
    either kind unchanged.

    Args:
      initializer: a lamina `Initializer`, or any callable
        `(key, shape, dtype) -> array` in the Flax layout.
      key: a PRNG key.
      shape: the weight's shape in torch layout, `(out, in, *kernel)`, or
        `(out,)` for a bias.
      dtype: the dtype to create it in.

    Returns:
      An array of shape `shape`.

    Raises:
      TypeError: `initializer` is not callable or returns no array.
      ValueError: the array it returns does not have the shape asked for.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> W = lm.initializers.init_weight(
      ...     jax.nn.initializers.he_normal(), jax.random.key(0), (1000, 10), jnp.float32)
      >>> W.shape, round(float(W.var()), 1)  # 2 / fan_in, fan_in = 10
      ((1000, 10), 0.2)
    """
    if not callable(initializer):
        raise layer_error(
            "lm.initializers.init_weight",
            f"initializer must be callable (key, shape, dtype) -> array, got "
            f"{type(initializer).__name__} {initializer!r}",
            TypeError,
        )
    shape = tuple(shape)
    foreign = not isinstance(initializer, Initializer) and len(shape) >= 2
    # (out, in, *kernel) -> (*kernel, in, out) for the Flax layout, and back.
    asked = shape[2:] + (shape[1], shape[0]) if foreign else shape
    array = initializer(key, asked, dtype)
    got = getattr(array, "shape", None)
    if got is None:
        raise layer_error(
            "lm.initializers.init_weight",
            f"initializer {initializer!r} returned {type(array).__name__}, not an "
            f"array; pass an initializer such as he_normal(), not the factory he_normal",
            TypeError,
        )
    if tuple(got) != asked:
        raise layer_error(
            "lm.initializers.init_weight",
            f"initializer {initializer!r} was asked for shape {asked}"
            + (f" (the (*kernel, in, out) layout of {shape})" if foreign else "")
            + f" but returned an array of shape {tuple(got)}",
        )
    if not foreign:
        return array
    k = len(shape) - 2
    return jnp.transpose(array, (k + 1, k) + tuple(range(k)))


def uniform(bound: float) -> Uniform:
    """Uniform in `[-bound, bound)`; `Dense` uses `uniform(1/sqrt(fan_in))` for biases.

    Example:
      >>> import lamina as lm
      >>> lm.initializers.uniform(0.5)
      Uniform(bound=0.5)
    """
    return Uniform(bound)


def normal(stddev: float = 1e-2) -> Normal:
    """Normal with mean 0 and standard deviation `stddev`.

    Example:
      >>> import lamina as lm
      >>> lm.initializers.normal(0.02)
      Normal(stddev=0.02)
    """
    return Normal(stddev)


def constant(value: float) -> Constant:
    """Every entry equal to `value`.

    Example:
      >>> import lamina as lm
      >>> lm.initializers.constant(-1.5)
      Constant(value=-1.5)
    """
    return Constant(value)


def torch_linear() -> VarianceScaling:
    """Uniform in +-1/sqrt(fan_in): `torch.nn.Linear`'s weight distribution.

    PyTorch writes it as `kaiming_uniform_(a=sqrt(5))`; the bound works out to
    `sqrt(6 / ((1 + 5) * fan_in)) = 1/sqrt(fan_in)`, variance `1/(3 fan_in)`.

    Example:
      >>> import lamina as lm
      >>> lm.initializers.torch_linear().mode
      'fan_in'
    """
    return VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias(fan_in: int) -> Uniform:
    """Uniform in +-1/sqrt(fan_in): `torch.nn.Linear`'s bias distribution.

    Example:
      >>> import lamina as lm
      >>> lm.initializers.torch_bias(16)
      Uniform(bound=0.25)
    """
    if isinstance(fan_in, bool) or not isinstance(fan_in, int):
        raise layer_error(
            "lm.initializers.torch_bias",
            f"fan_in must be an int >= 1, got {type(fan_in).__name__} {fan_in!r}",
            TypeError,
        )
    if fan_in < 1:
        raise layer_error("lm.initializers.torch_bias", f"fan_in must be an int >= 1, got {fan_in!r}")
    return Uniform(1.0 / math.sqrt(fan_in))


def glorot_uniform() -> VarianceScaling:
    """Uniform with variance 2/(fan_in + fan_out) (Glorot & Bengio, 2010).

    Example:
      >>> import lamina as lm
      >>> lm.initializers.glorot_uniform()
      VarianceScaling(scale=1.0, mode='fan_avg', distribution='uniform')
    """
    return VarianceScaling(1.0, "fan_avg", "uniform")


def glorot_normal() -> VarianceScaling:
    """Normal with variance 2/(fan_in + fan_out).

    Example:
      >>> import lamina as lm
      >>> lm.initializers.glorot_normal()
      VarianceScaling(scale=1.0, mode='fan_avg', distribution='normal')
    """
    return VarianceScaling(1.0, "fan_avg", "normal")


def he_uniform() -> VarianceScaling:
    """Uniform with variance 2/fan_in (He et al., 2015), for ReLU layers.

    Example:
      >>> import lamina as lm
      >>> lm.initializers.he_uniform()
      VarianceScaling(scale=2.0, mode='fan_in', distribution='uniform')
    """
    return VarianceScaling(2.0, "fan_in", "uniform")


def he_normal() -> VarianceScaling:
    """Normal with variance 2/fan_in, for ReLU layers.

    Example:
      >>> import lamina as lm
      >>> lm.initializers.he_normal()
      VarianceScaling(scale=2.0, mode='fan_in', distribution='normal')
    """
    return VarianceScaling(2.0, "fan_in", "normal")


def lecun_uniform() -> VarianceScaling:
    """Uniform with variance 1/fan_in (LeCun et al., 1998).

    Example:
      >>> import lamina as lm
      >>> lm.initializers.lecun_uniform()
      VarianceScaling(scale=1.0, mode='fan_in', distribution='uniform')
    """
    return VarianceScaling(1.0, "fan_in", "uniform")


def lecun_normal() -> VarianceScaling:
    """Normal with variance 1/fan_in.

    Example:
      >>> import lamina as lm
      >>> lm.initializers.lecun_normal()
      VarianceScaling(scale=1.0, mode='fan_in', distribution='normal')
    """
    return VarianceScaling(1.0, "fan_in", "normal")


xavier_uniform = glorot_uniform
xavier_normal = glorot_normal
kaiming_uniform = he_uniform
kaiming_normal = he_normal

INITIALIZERS: dict[str, type[Initializer]] = {
    cls.__name__: cls for cls in (VarianceScaling, Uniform, Normal, Constant)
}
"""Name -> class, for every initializer a checkpoint may name."""

__all__ = [
    "Constant",
    "Initializer",
    "Normal",
    "Uniform",
    "VarianceScaling",
    "constant",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "init_weight",
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "normal",
    "ones",
    "torch_bias",
    "torch_linear",
    "uniform",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
]
