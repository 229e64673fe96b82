"""visualize in a real browser: headless Chromium, driven by Selenium.

Needs `selenium` and the Debian packages `chromium` and `chromium-driver`;
without them the module is skipped. Set LAMINA_SCREENSHOT=docs/figures/visualize.png
to save the docs' screenshot while the tests run.
"""

import os
import pathlib
import shutil
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from example_runner import load
from headless import chrome, needs_browser

import lamina as lm
from lamina import visualize

try:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
except ImportError:
    pass  # needs_browser skips the module

pytestmark = [pytest.mark.slow, needs_browser]
WIDTH, HEIGHT = 1400, 900
X = jnp.array([0.8, 0.3, 0.9])  # the lesson's food: size, shape, nutrition


@pytest.fixture(scope="module")
def browser():
    driver = chrome(WIDTH, HEIGHT)
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
    )
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def lesson(tmp_path_factory):
    """The lesson's one-hidden-layer network as a page, with NumPy's forward pass."""
    model, params = load("forward_propagation").build()
    path = tmp_path_factory.mktemp("lesson") / "lesson.html"
    visualize(model, params, X, path=path)
    W1, b1, W2, b2 = (np.asarray(a, np.float64) for a in
                      (params[0]["W"], params[0]["b"], params[1]["W"], params[1]["b"]))
    x = np.asarray(X, np.float64)
    z1 = x @ W1.T + b1
    z2 = np.maximum(z1, 0) @ W2.T + b2
    reference = {
        "names": ["input", "Dense(4, relu)", "Dense(1, sigmoid)"],
        "inputs": [None, x, np.maximum(z1, 0)],
        "z": [None, z1, z2],
        "outputs": [x, np.maximum(z1, 0), 1 / (1 + np.exp(-z2))],
    }
    return path.as_uri(), reference


@pytest.fixture(scope="module")
def combinators(tmp_path_factory):
    model = lm.serial(
        lm.Flatten(),
        lm.residual(lm.serial(lm.Dense(4, act="tanh"), lm.Dropout(0.1))),
        lm.parallel(lm.Dense(2), lm.LayerNorm()),
        lm.Concat(),
        lm.Relu(),
    )
    _, params = model.init(jax.random.key(0), (2, 2))
    path = tmp_path_factory.mktemp("combinators") / "combinators.html"
    visualize(model, params, jnp.array([[1.0, -2.0], [0.5, 3.0]]), path=path)
    names = ["input", "Flatten()", "Dense(4, tanh)", "Dropout(0.1)",
             "residual(serial(Dense(4, tanh), Dropout(0.1)))", "Dense(2)", "LayerNorm()",
             "parallel(Dense(2), LayerNorm())", "Concat(axis=-1)", "Activation(relu)"]
    return path.as_uri(), {"names": names}


def open_page(browser, url):
    browser.get(url)
    browser.get_log("browser")  # start each test with an empty console
    return browser


def text(browser, element_id):
    return browser.find_element(By.ID, element_id).text


def console_errors(browser):
    return [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def click_node(browser, col, idx):
    browser.find_element(By.CSS_SELECTOR, f'.node[data-col="{col}"][data-idx="{idx}"]').click()
    return float(text(browser, "node-value"))


def test_page_loads_offline_without_errors(browser, lesson):
    url, _ = lesson
    browser.get(url)
    assert console_errors(browser) == []
    assert text(browser, "step-count") == "Step 0 of 2"
    # Nothing was fetched besides the page itself, and nothing links out.
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert "http" not in browser.execute_script("return document.documentElement.outerHTML").lower()
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg")) == 1


@pytest.mark.parametrize("page", ["lesson", "combinators"])
def test_next_and_previous_step_through_every_layer(browser, request, page):
    url, reference = request.getfixturevalue(page)
    open_page(browser, url)
    names, last = reference["names"], len(reference["names"]) - 1
    seen = [text(browser, "step-name")]
    while browser.find_element(By.ID, "next").is_enabled():
        browser.find_element(By.ID, "next").click()
        seen.append(text(browser, "step-name"))
        assert text(browser, "step-count") == f"Step {len(seen) - 1} of {last}"
        current = browser.find_elements(By.CSS_SELECTOR, "#network .col.current")
        assert [c.get_attribute("data-col") for c in current] == [str(len(seen) - 1)]
    assert seen == names
    for k in range(last - 1, -1, -1):
        browser.find_element(By.ID, "prev").click()
        assert text(browser, "step-name") == names[k]
    assert not browser.find_element(By.ID, "prev").is_enabled()
    assert console_errors(browser) == []


def test_arrow_keys_step_too(browser, combinators):
    url, reference = combinators
    open_page(browser, url)
    body = browser.find_element(By.TAG_NAME, "body")
    for name in reference["names"][1:]:
        body.send_keys(Keys.ARROW_RIGHT)
        assert text(browser, "step-name") == name
    body.send_keys(Keys.ARROW_RIGHT)  # past the end it stays on the output
    assert text(browser, "step-name") == reference["names"][-1]
    for name in reversed(reference["names"][:-1]):
        body.send_keys(Keys.ARROW_LEFT)
        assert text(browser, "step-name") == name
    assert console_errors(browser) == []


def test_clicked_node_shows_its_own_calculation(browser, lesson):
    url, ref = lesson
    open_page(browser, url)
    for col, values in enumerate(ref["outputs"]):
        for idx, want in enumerate(values):
            assert click_node(browser, col, idx) == pytest.approx(want, abs=0.5e-4 + 1e-6)
            assert text(browser, "step-name") == ref["names"][col]  # the step follows the click
            if col == 0:
                continue
            calc = text(browser, "node-calc")
            products = browser.find_elements(By.CSS_SELECTOR, "#node-calc .products tr")
            assert len(products) == len(ref["inputs"][col])
            assert f"z[{idx}] = \u03a3 + b[{idx}] = {ref['z'][col][idx]:.4f}" in calc
    assert console_errors(browser) == []


def test_screenshot_mid_way_with_a_calculation_open(browser, lesson, tmp_path):
    url, ref = lesson
    open_page(browser, url)
    browser.find_element(By.ID, "next").click()
    assert click_node(browser, 1, 2) == pytest.approx(ref["outputs"][1][2], abs=0.5e-4 + 1e-6)
    shot = tmp_path / "visualize.png"
    browser.save_screenshot(str(shot))
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (WIDTH, HEIGHT)
    from test_docs import committed_figure_size  # the docs show this screenshot

    assert committed_figure_size("visualize.png") == (WIDTH, HEIGHT)
    if os.environ.get("LAMINA_SCREENSHOT"):
        target = pathlib.Path(os.environ["LAMINA_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
