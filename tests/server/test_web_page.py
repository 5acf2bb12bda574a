"""The web page in a real browser: Debian's headless Chromium driven by Selenium, against the tiny model."""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
# screenshots land here (not committed); CI keeps the folder as an artifact
ARTIFACTS = Path(os.environ.get("IMAGINAIRY_TEST_ARTIFACTS", "test-artifacts"))
WAIT_SECONDS = 60


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("the page tests need Debian's chromium and chromium-driver: apt-get install -y chromium "
                    "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait(driver, condition):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.05).until(lambda d: condition(d))


def by_id(driver, element_id):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def fill(driver, element_id, value):
    element = by_id(driver, element_id)
    element.clear()
    element.send_keys(str(value))


def open_page(driver, http_api):
    driver.get(f"http://127.0.0.1:{http_api.http_port}/")
    wait(driver, lambda d: d.execute_script("return document.getElementById('model').options.length") == 3)
    # record every picture the preview shows
    driver.execute_script("""
        window.previews = [];
        new MutationObserver(() => window.previews.push(document.getElementById('preview').src))
            .observe(document.getElementById('preview'), {attributes: true, attributeFilter: ['src']});""")


def test_generate_watch_gallery_reuse_stop_and_drop(browser, http_api):
    open_page(browser, http_api)
    fill(browser, "prompt", "a tiny red house")
    for field, value in (("steps", 8), ("width", 64), ("height", 64), ("seed", 4321)):
        fill(browser, field, value)
    by_id(browser, "generate").click()
    wait(browser, lambda d: by_id(d, "status").text == "done")
    previews = browser.execute_script("return window.previews")
    assert any(src.startswith("data:image/png;base64,") for src in previews), previews  # live latent previews
    assert previews[-1].split("/v1/jobs/")[1].endswith("/images/0")  # then the finished image
    assert browser.execute_script("return document.getElementById('progress').value") == 1

    wait(browser, lambda d: "Seed: 4321" in (d.execute_script(
        "const img = document.querySelector('#gallery img'); return img && img.title") or ""))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "web-page.png"))

    fill(browser, "prompt", "something else")
    fill(browser, "seed", 1)
    browser.execute_script("document.querySelector('#gallery img').click()")
    wait(browser, lambda d: by_id(d, "details").get_attribute("open") is not None)
    assert "a tiny red house" in by_id(browser, "details-text").text
    by_id(browser, "use-settings").click()
    assert by_id(browser, "prompt").get_attribute("value") == "a tiny red house"
    assert by_id(browser, "seed").get_attribute("value") == "4321"

    fill(browser, "steps", 150)
    fill(browser, "seed", "")
    by_id(browser, "generate").click()
    wait(browser, lambda d: by_id(d, "status").text.startswith("running: step 2"))
    by_id(browser, "stop").click()
    wait(browser, lambda d: by_id(d, "status").text.startswith("cancelled"))
    assert by_id(browser, "generate").is_enabled()
    by_id(browser, "reuse-seed").click()
    assert by_id(browser, "seed").get_attribute("value") != ""

    drop_png(browser, a1111_png("a cat painted by someone else", steps=33, seed=99, sampler="Euler a"))
    wait(browser, lambda d: by_id(d, "prompt").get_attribute("value") == "a cat painted by someone else")
    assert by_id(browser, "steps").get_attribute("value") == "33"
    assert by_id(browser, "seed").get_attribute("value") == "99"
    assert by_id(browser, "sampler_type").get_attribute("value") == "k_euler_a"


def test_phone_sized_layout(browser, http_api):
    browser.set_window_size(390, 844)
    try:
        open_page(browser, http_api)
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390  # no sideways scrolling: one column
        form = by_id(browser, "form").rect
        gallery = by_id(browser, "gallery-section").rect
        assert gallery["y"] >= form["y"] + form["height"] - 1  # the gallery below the form
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "web-page-phone.png"))
    finally:
        browser.set_window_size(1200, 1000)


def a1111_png(prompt: str, *, steps: int, seed: int, sampler: str) -> bytes:
    text = PngImagePlugin.PngInfo()
    text.add_text("parameters", f"{prompt}\nNegative prompt: ugly\nSteps: {steps}, Sampler: {sampler}, "
                                f"CFG scale: 6, Seed: {seed}, Size: 64x64, Model: v1-5-pruned")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 90, 200)).save(buffer, format="PNG", pnginfo=text)
    return buffer.getvalue()


def drop_png(driver, png: bytes) -> None:
    """Drop a PNG file onto the page, as dragging it from the desktop does."""
    driver.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
        document.body.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true}));""",
                          base64.b64encode(png).decode())
