"""The documentation site builds with --strict and opens offline, in headless Chromium.

Needs the docs extra (`pip install -e ".[docs]"`; .ci/run installs it) and,
for the browser tests, selenium with Debian's chromium and chromium-driver.
The site is built once per session into a temporary folder.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest
from headless import chrome, needs_browser

pytestmark = pytest.mark.slow  # the tier `pytest -m 'not slow'` leaves out

pytest.importorskip("mkdocs", reason="needs the docs extra: pip install -e '.[docs]'")
pytest.importorskip("mkdocstrings_handlers.python", reason="needs the docs extra: pip install -e '.[docs]'")

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Anything the browser would fetch by itself: scripts, styles, images, frames, fonts.
NETWORK = [
    re.compile(r"<(?:script|img|iframe|source|audio|video|embed)\b[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//", re.I),
    re.compile(r"<link\b[^>]*\bhref\s*=\s*[\"']?(?:https?:)?//", re.I),
    re.compile(r"@import\s+(?:url\()?\s*[\"']?(?:https?:)?//", re.I),
    re.compile(r"url\(\s*[\"']?(?:https?:)?//", re.I),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stderr[-4000:]}"
    assert "WARNING" not in done.stderr, done.stderr
    return out


def test_every_page_is_built(site):
    for page in (ROOT / "docs").rglob("*.md"):
        built = site / page.relative_to(ROOT / "docs").with_suffix(".html")
        assert built.is_file(), f"{page} was not built"
    layers = (site / "reference" / "layers.html").read_text(encoding="utf-8")
    # mkdocstrings rendered a signature, arguments and an example.
    assert 'id="lamina.Dense"' in layers and "out_features" in layers and "&gt;&gt;&gt;" in layers


def test_no_page_loads_anything_from_the_network(site):
    offenders = []
    for path in site.rglob("*"):
        if path.suffix in (".html", ".css", ".js") and path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            for pattern in NETWORK:
                offenders += [f"{path.relative_to(site)}: {m.group(0)[:120]}" for m in pattern.finditer(text)]
    assert not offenders, "the site would load from the network:\n" + "\n".join(offenders)


try:
    from selenium.webdriver.common.by import By
except ImportError:
    pass  # needs_browser skips the tests that use it


@pytest.fixture(scope="module")
def browser():
    # No name resolves: a page that tried to load from the network would fail to.
    driver = chrome(1200, 900, "--host-resolver-rules=MAP * ~NOTFOUND")
    yield driver
    driver.quit()


@needs_browser
@pytest.mark.parametrize("page, heading, content", [
    ("tutorial/index.html", "Tutorial: from tensors to forward propagation", "Forward propagation with one hidden layer"),
    ("reference/layers.html", "Layers", "out_features"),
])
def test_page_renders_offline(site, browser, page, heading, content):
    browser.get((site / page).as_uri())
    assert browser.find_element(By.CSS_SELECTOR, "article h1").text.strip() == heading
    assert content in browser.find_element(By.TAG_NAME, "article").text
    # Material's own script ran (it builds the navigation's state) and its styles applied.
    assert browser.execute_script("return typeof document$ !== 'undefined'")
    assert browser.find_element(By.TAG_NAME, "body").value_of_css_property("margin") == "0px"
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    remote = [name for name in loaded if not name.startswith(("file:", "data:", "blob:"))]
    assert not remote, f"{page} loaded from the network: {remote}"  # (file: loads are not listed)
    if page.startswith("tutorial"):
        # The embedded lm.visualize page came from disk and drew its network.
        frame = browser.find_element(By.TAG_NAME, "iframe")
        browser.switch_to.frame(frame)
        try:
            assert browser.find_element(By.ID, "step-count").text == "Step 0 of 2"
        finally:
            browser.switch_to.default_content()
        images = browser.execute_script(
            "return [...document.querySelectorAll('article img')].map(i => [i.getAttribute('src'), i.naturalWidth])")
        assert images and all(width > 0 for _, width in images), images


@needs_browser
def test_every_page_opens_at_the_top(site, browser):
    """An embedded page (lm.visualize's, in an iframe) must never scroll the page around it."""
    import time

    scrolled = {}
    for path in sorted(site.rglob("*.html")):
        if "figures" in path.parts or path.name == "404.html":
            continue
        browser.get(path.as_uri())
        if "<iframe" in path.read_text(encoding="utf-8"):
            time.sleep(0.5)  # let the embedded page run its script
        y = browser.execute_script("return window.scrollY")
        if y:
            scrolled[str(path.relative_to(site))] = y
    assert not scrolled, f"pages that open scrolled down (px): {scrolled}"


def test_pages_lamina_writes_never_scroll_their_parent():
    # The browser test above needs a Chromium; this is its reason, read in the source:
    # scrollIntoView scrolls every scrollable ancestor, the embedding page's too.
    for page in [ROOT / "src" / "lamina" / "_src" / "inspection" / "visualize_template.html",
                 ROOT / "docs" / "figures" / "forward_propagation.html"]:
        text = page.read_text(encoding="utf-8")
        assert "scrollIntoView" not in text and "window.scroll" not in text, page
