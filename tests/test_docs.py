"""The documentation's code runs, its reference covers the public API, and its figures are the examples'.

Each page's ```python blocks run in order in one namespace, as the README's
do (tests/test_readme.py); blocks that build a `Mesh` need 8 devices and run
in tests/multidevice. Output-only blocks use a ```text fence.
"""

import inspect
import pathlib
import re
import struct

import pytest

import lamina as lm
import lamina.initializers
import lamina.testing

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))

# What each page's blocks must print, beyond running without an error.
PRINTS = {
    "index.md": ["(10,) (32, 10)", "Dense(20) Dense(3, act='tanh')", "serial[0] Dense(256, relu) True"],
    "tutorial/index.md": ["(3, 2) 28.0 28.0", "inner dimensions differ", "two linear layers == one",
                          "(1,) (4, 3) (1, 4)", "serial[1] Dense(1, sigmoid) z ="],
    "tutorial/training.md": ["(1347, 64) (450, 64)", "(256, 64)", "test accuracy"],
    "tutorial/cnn-and-transformer.md": ["(10,) 5178", "CNN test accuracy", "step 60: loss", "the quick brown "],
    "how-to/state.md": ["22\n"],  # num_batches_tracked after 2 steps and 5 epochs of 4 batches
    "how-to/checkpoints.md": ["True serial(Dense(16, act='relu'), Dense(3))", "147 275", "(7, 3)",
                              "stream loss", "loop loss"],
    "how-to/pytorch.md": ["['0.bias', '0.weight', '1.bias']"],
    "how-to/sharding.md": ["bfloat16 float32", "float32 float32"],
    "how-to/deep-models.md": ["(16, 1024, 256)"],
    "how-to/real-models.md": ["(16, 16, 16) (4, 16, 16, 16)", "(4, 16, 16)", "(2, 1, 16, 16)",
                              "(4, 5, 8)", "(10,) (17, 32)",
                              "(12, 50257) (50257, 64)", "6 True", "(2, 5, 20)"],
    "how-to/testing-layers.md": ["PyFloat fails check_layer's 'retrace' check"],
}

# Public names that are not functions or classes: no doctest of their own,
# but a docstring (or their class's) on their reference page, and a reason.
NO_EXAMPLE = {
    "lamina.ACTIVATIONS": "a constant name -> function dict; its attribute docstring lists what it is",
    "lamina.Params": "a type alias (Any), documented by its attribute docstring",
    "lamina.Shape": "a type alias (tuple[int, ...]), documented by its attribute docstring",
    "lamina.testing.PROPERTIES": "a constant tuple of names, documented by its attribute docstring",
    "lamina.initializers.zeros": "an instance of Constant, whose docstring has the example",
    "lamina.initializers.ones": "an instance of Constant, whose docstring has the example",
}
MODULES = {"initializers", "testing"}  # covered by their own reference pages


def python_blocks(page, needs_mesh=False):
    """A docs page's python snippets; those building a Mesh need 8 devices (tests/multidevice)."""
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)
    return [b for b in blocks if ("Mesh(" in b) == needs_mesh]


def public_names():
    names = [f"lamina.{n}" for n in lm.__all__ if n not in MODULES]
    names += [f"lamina.initializers.{n}" for n in lamina.initializers.__all__]
    names += [f"lamina.testing.{n}" for n in lamina.testing.__all__]
    return names


def resolve(dotted):
    module, _, name = dotted.rpartition(".")
    return getattr({"lamina": lm, "lamina.initializers": lamina.initializers,
                    "lamina.testing": lamina.testing}[module], name)


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p) or p in PRINTS])
def test_page_code_runs(page, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever a block writes lands here
    namespace = {"__name__": "__docs__"}
    for block in python_blocks(page):
        exec(compile(block, f"docs/{page}", "exec"), namespace)
    out = capsys.readouterr().out
    for expected in PRINTS.get(page, []):
        assert expected in out, f"docs/{page} no longer prints {expected!r}"


def test_every_page_with_code_is_checked():
    assert set(PRINTS) == {p for p in PAGES if python_blocks(p)}


def test_reference_covers_every_public_name():
    entries = set()
    for page in (DOCS / "reference").glob("*.md"):
        entries |= set(re.findall(r"^::: (\S+)\s*$", page.read_text(), re.M))
    missing = sorted(set(public_names()) - entries)
    assert not missing, f"public names without a `::: name` entry in docs/reference/: {missing}"
    unknown = sorted(entries - set(public_names()))
    assert not unknown, f"reference entries that are not public names: {unknown}"
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (DOCS / "reference").glob("*.md"):
        assert f"reference/{page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"


def test_every_public_name_has_a_docstring_example():
    missing = []
    for name in public_names():
        if name in NO_EXAMPLE:
            continue
        obj = resolve(name)
        doc = obj.__doc__ if (inspect.isclass(obj) or inspect.isroutine(obj)) else None
        if not doc or not re.search(r"^\s*Example:\s*\n(.*\n)*?\s*>>> ", doc, re.M):
            missing.append(name)
    assert not missing, f"public names whose docstring has no 'Example:' with a >>> doctest: {missing}"


def test_exempt_names_are_documented():
    for name in NO_EXAMPLE:
        obj = resolve(name)
        own = inspect.isroutine(obj) or (inspect.isclass(obj) and obj.__module__.startswith("lamina"))
        assert not own, f"{name} is lamina's own function or class: it can carry an example"
    source = "".join(p.read_text() for p in (ROOT / "src" / "lamina" / "_src").rglob("*.py"))
    for alias, anchor in [("ACTIVATIONS", '"""Activation names'), ("Shape", '"""The shape of ONE'),
                          ("Params", '"""A params pytree'), ("PROPERTIES", '"""The properties')]:
        assert anchor in source, f"{alias} lost its attribute docstring"


# Figures on the pages and where they come from: an example writes each one
# (`--out docs/figures`), or a test/benchmark does; regenerate with these.
FIGURES = {
    "forward_propagation.png": "python examples/forward_propagation.py --out docs/figures",
    "forward_propagation.html": "python examples/forward_propagation.py --out docs/figures",
    "digits_training.png": "python examples/train_digits.py --out docs/figures",
    "visualize.png": "LAMINA_SCREENSHOT=docs/figures/visualize.png python -m pytest tests/test_visualize_browser.py",
    "depth_compile.png": "cp benchmarks/depth_compile.png docs/figures/ (written by benchmarks/depth.py)",
}


def png_size(path):
    data = pathlib.Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_figures_are_the_examples_and_all_are_used():
    present = {p.name for p in (DOCS / "figures").iterdir()}
    assert present == set(FIGURES), f"docs/figures holds {sorted(present)}; FIGURES says how to make {sorted(FIGURES)}"
    pages = "".join((DOCS / p).read_text() for p in PAGES)
    for name in FIGURES:
        assert f"figures/{name}" in pages, f"docs/figures/{name} is on no page"
    for used in re.findall(r"figures/([\w.-]+)", pages):
        assert used in present, f"a page shows figures/{used}, which does not exist"
    assert (DOCS / "figures" / "depth_compile.png").read_bytes() == (ROOT / "benchmarks" / "depth_compile.png").read_bytes()
    page = (DOCS / "figures" / "forward_propagation.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "http" not in page


def committed_figure_size(name):
    """(width, height) of the committed docs figure; tests/test_examples.py compares its fresh one."""
    return png_size(DOCS / "figures" / name)


def test_committed_figures_are_pngs():
    for name in FIGURES:
        if name.endswith(".png"):
            width, height = committed_figure_size(name)
            assert width > 300 and height > 200, name
