"""Recording a forward pass: the steps `lm.trace` returns, taken from the layers' one `call`.

A layer runs the same code whether it is traced or not. While `lm.trace`
records, every layer run through `call_child` gets a frame: a layer with
children fills it with their steps (numbered within the layer, `-1` being
its own input) and may add one of its own (`add_step`), e.g. `parallel`'s
tuple; a leaf adds nothing and gets one step, with whatever it told `note`
on the way (`Dense` notes its weighted sum). The parent then takes the
child's steps into its own frame, paths and sources renumbered (`nest`).
When nothing records, none of this runs: `note` and `add_step` return at
once.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, NamedTuple, Optional, Union

from lamina._src.core.errors import join_path


class TraceStep(NamedTuple):
    """One layer's part in a forward pass, as returned by `lm.trace`.

    Attributes:
      path: where the layer sits, e.g. `"serial[2]"` (`""` for the root).
      index: the same place as a path into the params tree, e.g. `(2,)`, or
        `("self_attn",)` under a layer whose params are a dict.
      name: the layer's name, e.g. `"Dense(10, relu)"`.
      input: the example the layer received.
      params: the layer's own parameters (`()` for none).
      weighted_sum: for dense layers `x @ W.T + b` before the activation,
        else `None`.
      output: what the layer returned.
      layer: the layer itself (a `Layer`), e.g. to read its configuration.
      act: the name of the activation applied after the weighted sum, if any.
      sources: the positions, in the list of steps, of the steps whose
        outputs this layer received; `-1` is the model's input. `None`
        means the step just before (a user layer that does not say).
      values: other named values the layer computed on the way, e.g.
        BatchNorm's `{"mean", "var", "normalized"}`; `None` for none.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> model = lm.mlp([4, 2])
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> step = lm.trace(model, params, jnp.ones(3))[0]
      >>> step.path, step.name, step.act, step.weighted_sum.shape, step.layer == model.layers[0]
      ('serial[0]', 'Dense(4, relu)', 'relu', (4,), True)
    """

    path: str
    index: tuple[Union[int, str], ...]  # type: ignore[assignment]  # shadows tuple.index
    name: str
    input: Any
    params: Any
    weighted_sum: Any  # an array, or None for a layer without one
    output: Any
    layer: Any = None
    act: Optional[str] = None
    sources: Optional[tuple[int, ...]] = None
    values: Optional[dict[str, Any]] = None


class Frame:
    """What one layer recorded: its children's steps and its own notes."""

    __slots__ = ("steps", "notes")

    def __init__(self) -> None:
        self.steps: list[TraceStep] = []
        self.notes: dict[str, Any] = {}


_FRAMES: contextvars.ContextVar[Optional[list[Frame]]] = contextvars.ContextVar(
    "lamina_trace_frames", default=None)


def recording() -> bool:
    """Whether `lm.trace` is recording (a stack then runs its copies one by one)."""
    return _FRAMES.get() is not None


def note(**values: Any) -> None:
    """Tells the trace about a value the layer computed: `weighted_sum=`, `act=`, `values=`."""
    frames = _FRAMES.get()
    if frames is not None:
        frames[-1].notes.update(values)


def add_step(step: TraceStep) -> None:
    """Adds a layer's own step (e.g. `parallel`'s tuple) after its children's."""
    frames = _FRAMES.get()
    if frames is not None:
        frames[-1].steps.append(step)


def add_steps(steps: list[TraceStep]) -> None:
    """Adds steps a user layer's own `trace` returned."""
    frames = _FRAMES.get()
    if frames is not None:
        frames[-1].steps.extend(steps)


def parent_frame() -> Optional[Frame]:
    """The frame of the layer now running, `None` when nothing records."""
    frames = _FRAMES.get()
    return frames[-1] if frames else None


@contextlib.contextmanager
def frame() -> Iterator[Frame]:
    """A new frame for a layer about to run; recording starts here if it was off."""
    frames = _FRAMES.get()
    token = _FRAMES.set([]) if frames is None else None
    frames = _FRAMES.get()
    assert frames is not None
    new = Frame()
    frames.append(new)
    try:
        yield new
    finally:
        frames.pop()
        if token is not None:
            _FRAMES.reset(token)


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Nothing records inside: a layer's public `apply` called from a user's own code."""
    token = _FRAMES.set(None)
    try:
        yield
    finally:
        _FRAMES.reset(token)


def nest(steps: list[TraceStep], segment: str, i: Optional[Union[int, str, tuple]], offset: int,
         feed: int) -> list[TraceStep]:
    """A child's trace steps as steps of its parent.

    The child sits at `segment` (e.g. `"serial[2]"`), entry `i` of the
    parent's params (`None`: the parent's params are the child's own, sliced
    for a `stack`); its steps are numbered from `offset` in the parent's
    list, and its input came from the parent's step `feed` (`-1`: the
    parent's own input).
    """
    out: list[TraceStep] = []
    for s in steps:
        sources = None if s.sources is None else tuple(
            feed if j < 0 else offset + j for j in s.sources
        )
        if sources is None and not out:
            sources = (feed,)
        index = s.index if i is None else (i if isinstance(i, tuple) else (i,)) + s.index
        out.append(s._replace(path=join_path(segment, s.path), index=index, sources=sources))
    return out
