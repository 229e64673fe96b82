"""One error type for everything lamina raises, with the layer's path in it.

Every error lamina raises is a `LaminaError` and also the built-in error it
would otherwise be (`ValueError` for bad values and shapes, `TypeError` for
the wrong kind of object, ...), so both `except lm.LaminaError` and an
existing `except ValueError` catch it. The error carries `.layer` (the name
of the layer, or of the lamina function, it is about), `.path` (where that
layer sits in the model, e.g. `"serial[2]"`; `""` at the root) and
`.message`; combinators add their segment to `.path` as the error travels up,
so the text reads `serial[2] Dense(10): ...` wherever the error started.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


class LaminaError(Exception):
    """Base class of every error lamina raises.

    Each one is also a built-in error (`ValueError`, `TypeError`, ...), so
    code that catches those keeps working.

    Attributes:
      layer: the name of the layer (e.g. `"Dense(10)"`) or lamina function
        (e.g. `"fit"`) the error is about.
      path: where the layer sits in the model, e.g. `"serial[2]"`; `""` for
        the model itself or for errors outside a model.
      message: what was expected and what came, without the location.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> model = lm.serial(lm.Dense(4), lm.Dense(2))
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> try:
      ...     model.apply(params, jnp.ones(5))
      ... except lm.LaminaError as error:
      ...     print(error.path, error.layer, isinstance(error, ValueError))
      serial[0] Dense(4) True
    """

    def __init__(self, message: str, *, layer: str = "", path: str = ""):
        self.message, self.layer, self.path = message, layer, path
        super().__init__(self._text())

    def _text(self) -> str:
        where = " ".join(part for part in (self.path, self.layer) if part)
        return f"{where}: {self.message}" if where else self.message

    def _under(self, segment: str) -> "LaminaError":
        """Moves the error one level down the model: `segment` goes in front of its path."""
        self.path = join_path(segment, self.path)
        self.args = (self._text(),)
        return self

    def __reduce__(self):
        return _rebuild, (type(self), self.message, self.layer, self.path)


def _rebuild(cls: type, message: str, layer: str, path: str) -> LaminaError:
    return cls(message, layer=layer, path=path)


class LaminaValueError(LaminaError, ValueError):
    """A lamina error about a value or a shape."""


class LaminaTypeError(LaminaError, TypeError):
    """A lamina error about the kind of an object."""


class LaminaFloatingPointError(LaminaError, FloatingPointError):
    """A lamina error about a NaN or infinite value (e.g. a diverging loss)."""


class LaminaFileNotFoundError(LaminaError, FileNotFoundError):
    """A lamina error about a missing file or folder."""


class LaminaAssertionError(LaminaError, AssertionError):
    """A lamina check that failed (e.g. `lm.testing.check_layer`)."""


_KINDS = {
    ValueError: LaminaValueError,
    TypeError: LaminaTypeError,
    FloatingPointError: LaminaFloatingPointError,
    FileNotFoundError: LaminaFileNotFoundError,
    AssertionError: LaminaAssertionError,
}


def layer_error(name: str, message: str, cls: type = ValueError) -> LaminaError:
    """Builds the error for layer (or function) `name`; combinators add its path.

    Args:
      name: the layer's name, e.g. `"Dense(10)"`, or a function's, e.g. `"fit"`.
      message: what was expected and what came.
      cls: the built-in kind: `ValueError` for bad values and shapes,
        `TypeError` for the wrong kind of object, `FloatingPointError`,
        `FileNotFoundError` or `AssertionError`.
    """
    return _KINDS[cls](message, layer=name)  # type: ignore[index]


def join_path(segment: str, path: str) -> str:
    """`"serial[1]"` + `"residual[0]"` -> `"serial[1].residual[0]"`."""
    if not segment:
        return path
    return segment if not path else f"{segment}.{path}"


@contextlib.contextmanager
def child_context(segment: str, child: Any) -> Iterator[None]:
    """Adds `segment` (e.g. `serial[2]`) to errors raised inside a child layer.

    lamina's own errors get the segment in front of their path; any other
    `ValueError`/`TypeError` (from a user's layer or from JAX) keeps its type
    and text and gets a note saying in which layer it happened.
    """
    try:
        yield
    except LaminaError as error:
        error._under(segment)
        raise
    except (ValueError, TypeError) as error:
        if hasattr(error, "add_note"):  # Python >= 3.11
            error.add_note(f"(raised inside lamina layer {segment} {child.name})")
        raise


BATCH_HINT = "Layers take one example; use jax.vmap or lm.forward for batches."
"""The one wording of "this looks like a batch where one example was expected"."""

TRANSPOSED = (
    " (transposed? lamina stores W as (out, in), like torch.nn.Linear; no .T is needed)"
)
"""The one wording of "this weight looks transposed"."""


def transposed_hint(want: tuple, got: tuple) -> str:
    """`TRANSPOSED` when `got` is the 2-D `want` with its axes swapped, else `""`."""
    want, got = tuple(want), tuple(got)
    return TRANSPOSED if len(want) == 2 and got == want[::-1] and want != got else ""
