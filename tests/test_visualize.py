"""visualize: the HTML page of a trace, read back with Python's HTML parser.

The numbers are checked against a forward pass written in NumPy; a real
browser runs the page in test_visualize_browser.py.
"""

import collections
import html.parser
import json
import os
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

import lamina as lm
from lamina import visualize

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_BLUE, _ORANGE = "#2166ac", "#d6604d"


class _Page(html.parser.HTMLParser):
    """Checks that tags nest and collects what the tests look at."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.tags = [], [], collections.Counter()
        self.scripts, self.nodes, self.more, self.edges, self.items = {}, {}, {}, [], []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags[tag] += 1
        if tag not in _VOID:
            self.stack.append((tag, attrs))

    def handle_startendtag(self, tag, attrs):  # <rect/>, <line/> in the SVG
        self.tags[tag] += 1
        if tag == "line":
            self.edges.append(dict(attrs) | {"col": self._inside("flow")["data-col"]})

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1][0] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
            return
        self.stack.pop()

    def handle_data(self, data):
        if not self.stack:
            return
        tag, attrs = self.stack[-1]
        cls = attrs.get("class", "")
        if tag == "script" and "id" in attrs:
            self.scripts[attrs["id"]] = self.scripts.get(attrs["id"], "") + data
        elif tag == "text" and cls == "val":
            node = self._inside("node")
            self.nodes[int(node["data-col"]), int(node["data-idx"])] = data
        elif tag == "text" and cls == "more":
            self.more[int(self._inside("col")["data-col"])] = data
        elif tag == "li":
            self.items.append(data)

    def _inside(self, cls):
        return next(a for _, a in reversed(self.stack) if a.get("class") == cls)


def _strict(name):
    raise AssertionError(f"{name} is not JSON a browser can parse")


def parse(page):
    """The parsed page and its JSON data, after checking the structure."""
    doc = _Page(page)
    assert page.startswith("<!DOCTYPE html>")
    assert doc.errors == [] and doc.stack == []
    assert doc.tags["svg"] == 1 and doc.tags["html"] == 1
    assert "http" not in page.lower()
    return doc, json.loads(doc.scripts["lamina-data"], parse_constant=_strict)


def numbers(t):
    """A tensor of the page's JSON as a float64 array (or tuple of them)."""
    if "parts" in t:
        return tuple(numbers(p) for p in t["parts"])
    return np.array([float(v) for v in t["values"]], np.float64).reshape(t["shape"])


def f64(*arrays):
    return [np.asarray(a, np.float64) for a in arrays]


def shown(doc, col):
    """The numbers drawn in one column's nodes, in order."""
    return np.array([float(v) for (c, _), v in sorted(doc.nodes.items()) if c == col])


def test_page_holds_the_forward_pass_as_numpy_computes_it(key):
    model = lm.serial(lm.Dense(5, act="relu"), lm.Dense(3, act="sigmoid"))
    _, params = model.init(key, (4,))
    x = jnp.array([0.5, -1.25, 2.0, 0.1])
    doc, data = parse(visualize(model, params, x))

    W1, b1, W2, b2 = f64(params[0]["W"], params[0]["b"], params[1]["W"], params[1]["b"])
    z1 = np.asarray(x, np.float64) @ W1.T + b1
    h = np.maximum(z1, 0)
    z2 = h @ W2.T + b2
    y = 1 / (1 + np.exp(-z2))

    first, second = data["steps"]
    assert [(s["path"], s["name"], s["kind"], s["act"]) for s in data["steps"]] == [
        ("serial[0]", "Dense(5, relu)", "dense", "relu"),
        ("serial[1]", "Dense(3, sigmoid)", "dense", "sigmoid"),
    ]
    # Full precision: the float32 params come back bit for bit.
    np.testing.assert_array_equal(np.float32(numbers(first["W"])), params[0]["W"])
    np.testing.assert_array_equal(np.float32(numbers(second["b"])), params[1]["b"])
    np.testing.assert_array_equal(numbers(data["input"]), np.float32(x))
    for got, want in [(first["z"], z1), (first["output"], h), (second["input"], h),
                      (second["z"], z2), (second["output"], y)]:
        np.testing.assert_allclose(numbers(got), want, rtol=1e-5, atol=1e-6)
    assert (first["sources"], second["sources"]) == ([0], [1])
    # The drawing shows the same numbers to 4 decimals.
    for col, want in enumerate([np.asarray(x, np.float64), h, y]):
        np.testing.assert_allclose(shown(doc, col), want, atol=0.5e-4 + 1e-6)
    assert doc.items[0].startswith("input") and len(doc.items) == 3


def test_a_plain_list_is_one_example_like_an_array(key):
    model = lm.mlp([3, 2])
    _, params = model.init(key, (2,))
    _, from_list = parse(visualize(model, params, [0.25, -1.5]))
    _, from_array = parse(visualize(model, params, jnp.array([0.25, -1.5])))
    assert from_list["input"] == from_array["input"] == {"shape": [2], "values": [0.25, -1.5]}
    assert from_list["steps"][0]["input"] == from_list["input"]


def test_edges_follow_weight_sign_and_size(key):
    model = lm.mlp([4, 2])
    _, params = model.init(key, (3,))
    doc, _ = parse(visualize(model, params, jnp.ones(3)))
    W = np.asarray(params[0]["W"])
    edges = [e for e in doc.edges if e["col"] == "1"]
    assert sorted((int(e["data-to"]), int(e["data-from"])) for e in edges) == [
        (o, j) for o in range(4) for j in range(3)
    ]
    for e in edges:
        w = W[int(e["data-to"]), int(e["data-from"])]
        assert e["stroke"] == (_BLUE if w >= 0 else _ORANGE)
    widths = {abs(W[int(e["data-to"]), int(e["data-from"])]): float(e["stroke-width"]) for e in edges}
    ordered = [widths[w] for w in sorted(widths)]
    assert ordered == sorted(ordered) and ordered[-1] == pytest.approx(3.0)


@pytest.mark.parametrize("max_nodes, hidden", [(16, {0: 4, 1: 24}), (40, {}), (1, {0: 19, 1: 39, 2: 6})])
def test_wide_layers_show_their_first_units_and_how_many_more(key, max_nodes, hidden):
    model = lm.mlp([40, 7])
    _, params = model.init(key, (20,))
    x = jnp.linspace(-1.0, 1.0, 20)
    doc, data = parse(visualize(model, params, x, max_nodes=max_nodes))
    assert doc.more == {c: f"+{n} more" for c, n in hidden.items()}
    assert [len(shown(doc, c)) for c in range(3)] == [min(n, max_nodes) for n in (20, 40, 7)]
    # Only the drawing is cut: the data holds every unit, so do the panels.
    W1, b1 = f64(params[0]["W"], params[0]["b"])
    h = np.maximum(np.asarray(x, np.float64) @ W1.T + b1, 0)
    np.testing.assert_allclose(numbers(data["steps"][0]["output"]), h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(shown(doc, 1), h[:max_nodes], atol=0.5e-4 + 1e-6)
    assert data["maxNodes"] == max_nodes
    lines = collections.Counter(e["col"] for e in doc.edges)
    visible = [min(n, max_nodes) for n in (20, 40, 7)]
    assert lines == {"1": visible[0] * visible[1], "2": visible[1] * visible[2]}


def test_combinators_are_shown_with_their_inputs_and_outputs(key):
    model = lm.serial(
        lm.Flatten(),
        lm.residual(lm.serial(lm.Dense(4, act="tanh"), lm.Dropout(0.1))),
        lm.parallel(lm.Dense(2), lm.LayerNorm()),
        lm.Concat(),
        lm.Relu(),
    )
    _, params = model.init(key, (2, 2))
    x = jnp.array([[1.0, -2.0], [0.5, 3.0]])
    doc, data = parse(visualize(model, params, x))

    W1, b1 = f64(params[1][0][0]["W"], params[1][0][0]["b"])
    W2, b2 = f64(params[2][0]["W"], params[2][0]["b"])
    flat = np.asarray(x, np.float64).reshape(4)
    fx = np.tanh(flat @ W1.T + b1)
    r = flat + fx
    left = r @ W2.T + b2
    right = (r - r.mean()) / np.sqrt(r.var() + 1e-5)
    joined = np.concatenate([left, right])
    expected = [  # (path, kind, sources, output)
        ("serial[0]", "layer", [0], flat),
        ("serial[1].residual[0].serial[0]", "dense", [1], fx),
        ("serial[1].residual[0].serial[1]", "layer", [2], fx),
        ("serial[1]", "residual", [1, 3], r),
        ("serial[2].parallel[0]", "dense", [4], left),
        ("serial[2].parallel[1]", "layer", [4], right),
        ("serial[2]", "parallel", [5, 6], (left, right)),
        ("serial[3]", "layer", [7], joined),
        ("serial[4]", "layer", [8], np.maximum(joined, 0)),
    ]
    steps = data["steps"]
    assert [(s["path"], s["kind"], s["sources"]) for s in steps] == [e[:3] for e in expected]
    for step, (*_, want) in zip(steps, expected):
        got = numbers(step["output"])
        for g, w in zip(got if isinstance(want, tuple) else [got], want if isinstance(want, tuple) else [want]):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(numbers(steps[0]["input"]), np.asarray(x), rtol=0)
    assert [p["name"] for p in steps[5]["params"]] == ["offset", "scale"]
    assert steps[3]["name"] == "residual(serial(Dense(4, tanh), Dropout(0.1)))"
    # Every step is a column of the drawing and an entry of the step list.
    assert {c for c, _ in doc.nodes} == set(range(len(steps) + 1))
    assert len(doc.items) == len(steps) + 1
    np.testing.assert_allclose(shown(doc, 7), joined, atol=0.5e-4 + 1e-6)


def test_dense_without_bias_and_with_leading_axes(key):
    layer = lm.Dense(3, use_bias=False)
    _, params = layer.init(key, (2, 4))
    x = jnp.arange(8.0).reshape(2, 4) / 8
    doc, data = parse(visualize(layer, params, x))
    (step,) = data["steps"]
    assert (step["path"], step["b"], step["act"], step["sources"]) == ("", None, None, [0])
    z = np.asarray(x, np.float64) @ np.asarray(params["W"], np.float64).T
    np.testing.assert_allclose(numbers(step["z"]), z, rtol=1e-5, atol=1e-6)
    # Output unit (row r, i) is wired to the inputs of the same row only.
    wires = {(int(e["data-from"]), int(e["data-to"])) for e in doc.edges}
    assert wires == {(4 * (o // 3) + j, o) for o in range(6) for j in range(4)}


def test_names_cannot_break_the_page_or_link_out(key):
    name = 'Mine("</script><b>", HTTP://example.org & https)'
    layer = lm.Layer(lambda k, s: (s, ()), lambda p, x, *, key=None: 2 * x, name)
    doc, data = parse(visualize(layer, (), jnp.ones(2)))
    assert data["steps"][0]["name"] == name
    np.testing.assert_array_equal(numbers(data["steps"][0]["output"]), [2.0, 2.0])


def test_non_finite_values_stay_valid_json():
    x = jnp.array([1.0, jnp.inf, -jnp.inf, jnp.nan])
    doc, data = parse(visualize(lm.Identity(), (), x))
    assert data["steps"][0]["output"]["values"] == [1.0, "Infinity", "-Infinity", "NaN"]
    assert [doc.nodes[1, i] for i in range(4)] == ["1.0000", "Infinity", "-Infinity", "NaN"]


@pytest.mark.parametrize("as_path", [str, pathlib.Path])
def test_writes_the_page_to_path(tmp_path, key, as_path):
    model = lm.mlp([3, 1])
    _, params = model.init(key, (2,))
    target = tmp_path / "view.html"
    target.write_text("an older page")
    page = visualize(model, params, jnp.ones(2), path=as_path(target))
    assert target.read_text(encoding="utf-8") == page
    assert os.listdir(tmp_path) == ["view.html"]  # no temporary file left behind


def test_bad_arguments_raise_clear_errors(key):
    model = lm.mlp([3, 1])
    _, params = model.init(key, (2,))
    x = jnp.ones(2)
    with pytest.raises(ValueError, match=r"^visualize: max_nodes must be >= 1, got 0$"):
        visualize(model, params, x, max_nodes=0)
    for bad in (2.0, True, "16"):
        with pytest.raises(TypeError, match=r"^visualize: max_nodes must be an int"):
            visualize(model, params, x, max_nodes=bad)
    with pytest.raises(TypeError, match=r"^visualize: path must be a str or os.PathLike"):
        visualize(model, params, x, path=3)
    with pytest.raises(TypeError, match=r"^visualize: expected a lamina Layer"):
        visualize(lambda p, x: x, params, x)
    # Input and params that do not fit get exactly lm.trace's message.
    for bad_params, bad_x in [(params, jnp.ones(5)), (params[:1], x), (params, jnp.ones(2, jnp.int32))]:
        with pytest.raises((ValueError, TypeError)) as expected:
            lm.trace(model, bad_params, bad_x)
        with pytest.raises(expected.type) as got:
            visualize(model, bad_params, bad_x)
        assert str(got.value) == str(expected.value)
