"""See forward propagation: one self-contained, interactive HTML page of a trace.

`visualize` runs `lm.trace` on one example and draws the network as inline
SVG: one column per layer, nodes coloured by their values, dense edges by the
sign and size of their weights. Every number of the trace travels in the page
as JSON; a small inline script steps through the layers (buttons or arrow
keys) and shows any node's own calculation. Nothing is fetched from anywhere,
so the page opens offline straight from a file.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from importlib import resources
from typing import Any, Mapping, Union

import jax
import numpy as np

from lamina._src.core.errors import layer_error
from lamina._src.core.layer import Layer, Params, check_layer_type
from lamina._src.core.record import TraceStep
from lamina._src.inspection.trace import trace
from lamina._src.io.files import write_atomically

_DECIMALS = 4
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}

# Geometry of the drawing, in pixels.
_COL_GAP, _NODE_W, _NODE_H, _ROW, _TOP = 200, 80, 24, 34, 76
_POSITIVE, _NEGATIVE = (33, 102, 172), (214, 96, 77)  # blue, orange-red
_ROLE = {"residual": "x + f(x)", "parallel": "tuple of branches"}


def visualize(
    model: Layer,
    params: Params,
    x: jax.typing.ArrayLike,
    *,
    path: Union[str, os.PathLike, None] = None,
    max_nodes: int = 16,
    state: Any = None,
) -> str:
    """Draws forward propagation of one example as an interactive HTML page.

    The page shows one column per layer of `lm.trace(model, params, x)` (the
    input, then every layer in the order it runs, combinators included), with
    Next/Previous buttons and the arrow keys to step through it. A step shows
    its input, `W` and `b`, the weighted sums `z = x . W^T + b` and the
    activations; clicking a node shows its products `w_ij * x_j`, their sum,
    the bias and the activation with the real numbers. The page is one file
    of HTML with inline SVG, CSS and JavaScript: no network, no external files.

    Args:
      model: a `Layer`.
      params: its params.
      x: ONE example, shape `input_shape`.
      path: where to write the page (a `str` or path-like); `None` writes
        nothing. The file is replaced atomically.
      max_nodes: how many units of each layer to draw, >= 1; wider layers
        show their first `max_nodes` units and a "+N more" marker.
      state: the model's state, for a model with state (inference mode); a
        BatchNorm step then shows the mean, variance and normalized value it
        used, with its scale and offset.

    Returns:
      The page, as a string.

    Raises:
      ValueError: `max_nodes < 1`, or `x` or `params` do not fit the model
        (the same message as `lm.trace`).
      TypeError: `max_nodes` is not an int, `path` is not a path, or `model`
        is not a `Layer`.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> model = lm.mlp([4, 1], final_act="sigmoid")
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> page = lm.visualize(model, params, jnp.array([0.8, 0.3, 0.9]))
      >>> page.startswith("<!DOCTYPE html>"), "http" in page
      (True, False)
    """
    if isinstance(max_nodes, bool) or not isinstance(max_nodes, int):
        raise layer_error(
            "visualize",
            f"max_nodes must be an int, got {type(max_nodes).__name__} {max_nodes!r}",
            TypeError,
        )
    if max_nodes < 1:
        raise layer_error("visualize", f"max_nodes must be >= 1, got {max_nodes}")
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise layer_error(
            "visualize",
            f"path must be a str or os.PathLike (or None), got "
            f"{type(path).__name__} {path!r}",
            TypeError,
        )
    check_layer_type("visualize", model)
    steps = trace(model, params, x, state=state)
    data = _page_data(model.name, x, steps, max_nodes)
    page = _page(data)
    if path is not None:
        write_atomically(os.fspath(path), page.encode("utf-8"), "visualize")
    return page


def _page_data(model_name: str, x: Any, steps: list[TraceStep], max_nodes: int) -> dict:
    """Everything the page shows, as JSON-ready Python values."""
    records = []
    for k, s in enumerate(steps):
        kind = s.layer.kind if s.layer is not None else "layer"
        if kind == "dense" and s.weighted_sum is None:
            kind = "layer"  # a layer that says dense but shows no weighted sum
        record = {
            "path": s.path,
            "name": s.name,
            "depth": max(len(s.index) - 1, 0),
            "input": _tensor(s.input),
            "output": _tensor(s.output),
            "kind": kind,
            # Column 0 is the input, column j + 1 is step j; a step that does
            # not say where its input came from follows the step before it.
            "sources": [k] if s.sources is None else [j + 1 for j in s.sources],
        }
        if kind == "dense":
            record.update(
                act=s.act,
                W=_tensor(s.params["W"]),
                b=_tensor(s.params["b"]) if "b" in s.params else None,
                z=_tensor(s.weighted_sum),
            )
        elif kind == "layer":
            record["params"] = _named_leaves(s.params)
            record["values"] = _named_leaves(s.values or {})
        records.append(record)
    return {
        "model": model_name,
        "maxNodes": max_nodes,
        "decimals": _DECIMALS,
        "input": _tensor(x),
        "steps": records,
    }


def _tensor(value: Any) -> dict:
    """A value as `{"shape", "values"}` (values flat, row-major) or `{"parts"}`."""
    if isinstance(value, (tuple, list)) and not _plain_numbers(value):
        return {"parts": [_tensor(v) for v in value]}
    if isinstance(value, Mapping):
        return {"parts": [_tensor(v) for v in value.values()], "labels": [str(k) for k in value]}
    a = np.asarray(value)
    # float64 holds every float32/bfloat16 value exactly: the page keeps full precision.
    flat = np.asarray(a, np.float64).ravel()
    values: list = flat.tolist()
    if not np.isfinite(flat).all():
        # JSON has no NaN or Infinity; the page's script turns these strings back.
        values = [v if math.isfinite(v) else _NON_FINITE[str(v)] for v in values]
    return {"shape": list(a.shape), "values": values}


def _plain_numbers(value: Any) -> bool:
    """Whether `value` is a number or nested lists of them, like `[0.8, 0.3]`."""
    if isinstance(value, (tuple, list)):
        return all(_plain_numbers(v) for v in value)
    return isinstance(value, (int, float))


def _named_leaves(params: Params) -> list[dict]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return [
        {"name": ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys),
         "value": _tensor(leaf)}
        for keys, leaf in leaves
    ]


def _flat(t: dict) -> list:
    if "parts" in t:
        return [v for part in t["parts"] for v in _flat(part)]
    return [float(v) for v in t["values"]]


def _shape_text(t: dict) -> str:
    if "parts" in t:
        return "(" + ", ".join(_shape_text(p) for p in t["parts"]) + ")"
    return str(tuple(t["shape"]))


def _page(data: dict) -> str:
    template = (resources.files("lamina._src.inspection") / "visualize_template.html").read_text("utf-8")
    steps = data["steps"]
    first, last = data["input"], (steps[-1]["output"] if steps else data["input"])
    parts = {
        "title": _text(f"Forward propagation: {data['model']}"),
        "model": _text(data["model"]),
        "shapes": _text(f"input {_shape_text(first)} \u2192 output {_shape_text(last)}"),
        "svg": _svg(data),
        "steps": _step_list(data),
        "data": _json(data),
    }
    # One pass, so text inside a value is never taken for another placeholder.
    return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m[1]], template)


def _text(s: str) -> str:
    """Escapes `s` for HTML; a user's layer name cannot smuggle a link in either."""
    return re.sub(r"(?i)h(?=ttp)", lambda m: f"&#{ord(m[0])};", html.escape(s))


def _json(data: dict) -> str:
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    # These characters occur only inside JSON strings, where \u escapes mean
    # the same; escaped, no layer name can close the <script> element.
    for ch in "<>&":
        text = text.replace(ch, f"\\u{ord(ch):04x}")
    return re.sub(r"(?i)h(?=ttp)", lambda m: f"\\u{ord(m[0]):04x}", text)


def _fmt(v: float) -> str:
    # Written like JavaScript's toFixed, so the drawing and the panels agree.
    return f"{v:.{_DECIMALS}f}" if math.isfinite(v) else _NON_FINITE[str(v)]


def _colour(v: float, scale: float) -> tuple[str, str]:
    """Fill and text colour for a value: white at 0, blue positive, orange negative."""
    if not math.isfinite(v):
        return "#bbbbbb", "#1a1a1a"
    t = min(abs(v) / scale, 1.0) if scale > 0 else 0.0
    rgb = [round(255 + (c - 255) * t) for c in (_NEGATIVE if v < 0 else _POSITIVE)]
    return "#{:02x}{:02x}{:02x}".format(*rgb), "#ffffff" if t > 0.55 else "#1a1a1a"


def _svg(data: dict) -> str:
    limit = data["maxNodes"]
    columns = [{"name": "input", "path": "x", "output": data["input"], "kind": "input"}]
    columns += data["steps"]
    values = [_flat(c["output"]) for c in columns]
    rows = [min(len(v), limit) + (len(v) > limit) for v in values]
    most = max(rows)
    bottom = _TOP + most * _ROW
    detour = any(s < c - 1 for c, col in enumerate(columns) for s in col.get("sources", ()))
    width, height = _COL_GAP * len(columns), bottom + (44 if detour else 14)

    def cx(c):
        return _COL_GAP * c + _COL_GAP / 2

    def cy(c, r):
        return _TOP + (most - rows[c]) * _ROW / 2 + r * _ROW + _ROW / 2

    links, nodes = [], []
    for c, col in enumerate(columns):
        flow = []
        for s in col.get("sources", ()):
            if col["kind"] == "dense":
                flow += _weight_edges(col, s, c, values, limit, cx, cy)
            else:
                flow.append(_link(cx(s), cx(c), (bottom + _TOP) / 2, bottom + 22, c - s > 1))
        links.append(f'<g class="flow" data-col="{c}">{"".join(flow)}</g>')

        scale = max((abs(v) for v in values[c] if math.isfinite(v)), default=0.0)
        name = col["name"]
        short = name if len(name) <= 27 else name[:26] + "\u2026"
        where = col["path"] if len(col["path"]) <= 28 else "\u2026" + col["path"][-27:]
        role = _ROLE.get(col["kind"])
        note = _shape_text(col["output"]) + (f" = {role}" if role else "")
        out = [
            f'<g class="col" data-col="{c}"><g class="head"><title>{_text(name)}</title>',
            f'<text class="name" x="{cx(c):.1f}" y="22">{_text(short)}</text>',
            f'<text class="path" x="{cx(c):.1f}" y="39">{_text(where) or "&#160;"}</text>',
            f'<text class="shape" x="{cx(c):.1f}" y="56">{_text(note)}</text></g>',
        ]
        for i, v in enumerate(values[c][:limit]):
            fill, ink = _colour(v, scale)
            x, y = cx(c) - _NODE_W / 2, cy(c, i) - _NODE_H / 2
            out.append(
                f'<g class="node" data-col="{c}" data-idx="{i}">'
                f"<title>{_text(name)} [{i}] = {_fmt(v)}</title>"
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{_NODE_W}" height="{_NODE_H}" '
                f'rx="{_NODE_H / 2}" fill="{fill}"/>'
                f'<text class="val" x="{cx(c):.1f}" y="{cy(c, i) + 4:.1f}" '
                f'fill="{ink}">{_fmt(v)}</text></g>'
            )
        hidden = len(values[c]) - limit
        if hidden > 0:
            out.append(
                f'<text class="more" x="{cx(c):.1f}" y="{cy(c, limit) + 4:.1f}">'
                f"+{hidden} more</text>"
            )
        nodes.append("".join(out) + "</g>")
    return (
        f'<svg id="network" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="network">'
        f'<g class="links">{"".join(links)}</g>{"".join(nodes)}</svg>'
    )


def _weight_edges(col, s, c, values, limit, cx, cy) -> list[str]:
    """Lines from the visible inputs to the visible units of a dense column."""
    W = np.asarray(col["W"]["values"], np.float64).reshape(col["W"]["shape"])
    out_features, in_features = W.shape
    big = float(np.nanmax(np.abs(W))) if W.size else 0.0
    lines = []
    for o in range(min(len(values[c]), limit)):
        row, i = divmod(o, out_features)  # leading axes: unit i of row `row`
        for j in range(in_features):
            src = row * in_features + j
            if src >= min(len(values[s]), limit):
                break
            w = W[i, j]
            t = abs(w) / big if big > 0 and math.isfinite(w) else 0.0
            colour = "#{:02x}{:02x}{:02x}".format(*(_NEGATIVE if w < 0 else _POSITIVE))
            lines.append(
                f'<line data-from="{src}" data-to="{o}" '
                f'x1="{cx(s) + _NODE_W / 2:.1f}" y1="{cy(s, src):.1f}" '
                f'x2="{cx(c) - _NODE_W / 2:.1f}" y2="{cy(c, o):.1f}" stroke="{colour}" '
                f'stroke-width="{0.6 + 2.4 * t:.2f}" stroke-opacity="{0.15 + 0.75 * t:.2f}"/>'
            )
    return lines


def _link(x1: float, x2: float, y: float, low: float, detour: bool) -> str:
    """A dashed data-flow arrow for a layer without weights."""
    a, b = x1 + _NODE_W / 2, x2 - _NODE_W / 2
    if not detour:
        d = f"M{a:.1f} {y:.1f} L{b:.1f} {y:.1f}"
    else:  # go below the columns in between instead of through their nodes
        d = (
            f"M{a:.1f} {y:.1f} C{a + 30:.1f} {y:.1f} {a + 30:.1f} {low:.1f} {a + 60:.1f} {low:.1f} "
            f"L{b - 60:.1f} {low:.1f} C{b - 30:.1f} {low:.1f} {b - 30:.1f} {y:.1f} {b:.1f} {y:.1f}"
        )
    return f'<path class="link" d="{d}"/>'


def _step_list(data: dict) -> str:
    shape = _text(_shape_text(data["input"]))
    items = [f'<li data-col="0" style="--depth:0">input <span>{shape}</span></li>']
    for c, s in enumerate(data["steps"], start=1):
        items.append(
            f'<li data-col="{c}" style="--depth:{s["depth"]}"><code>{_text(s["path"])}</code> '
            f'{_text(s["name"])} <span>{_text(_shape_text(s["output"]))}</span></li>'
        )
    return "".join(items)
