"""The Gradio demo (app.py) driven in a real headless Chromium: its highlighted entities equal the Python API's."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import load_app, make_image
from mmib import MMIBPredictor
from prediction_checkpoints import save_ner_checkpoint

REPO = Path(__file__).resolve().parents[1]
TEXT = "RT @john: John Smith visits London and Paris!"


def find_browser() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_entity_labels_and_highlight_pieces_cover_the_text():
    app = load_app()
    entities = [
        {"type": "PER", "score": 0.876, "start": 4, "end": 7},
        {"type": "LOC", "score": 0.5, "start": 14, "end": 16},
    ]
    pieces = app.highlight("RT @bob is in NY", entities)
    assert pieces == [("RT @", None), ("bob", "PER 0.88"), (" is in ", None), ("NY", "LOC 0.50")]
    assert all(os.path.isfile(image) for _, image in app.sample_examples())


@pytest.mark.browser
@pytest.mark.slow
def test_app_in_headless_chromium_shows_the_api_entities(tmp_path):
    found = find_browser()
    if found is None:
        message = "no chromium + chromedriver on PATH (Debian: apt-get install chromium chromium-driver)"
        print(f"SKIPPED: {message}")
        pytest.skip(message)
    pytest.importorskip("gradio")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    model = save_ner_checkpoint(tmp_path / "ner")
    image_path = tmp_path / "post.png"
    make_image(7, size=(64, 48)).save(image_path)
    expected = MMIBPredictor.from_pretrained(model, dtype="float32")({"text": TEXT, "image": str(image_path)})
    expected = [(entity["text"], f"{entity['type']} {entity['score']:.2f}") for entity in expected["entities"]]
    assert expected, "the biased tiny model should find entities"

    port = free_port()
    environment = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(
        [sys.executable, str(REPO / "app.py"), "--model", model, "--port", str(port), "--dtype", "float32"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1600"):
        options.add_argument(argument)
    driver = None
    try:
        for line in server.stdout:
            if "Running on local URL" in line:
                break
        else:
            pytest.fail(f"app.py exited with {server.wait()} before serving")
        driver = webdriver.Chrome(service=webdriver.ChromeService(found[1]), options=options)
        wait = WebDriverWait(driver, 120)
        driver.get(f"http://127.0.0.1:{port}")
        wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#post-text textarea")))
        driver.find_element(By.CSS_SELECTOR, "#post-text textarea").send_keys(TEXT)
        driver.find_element(By.CSS_SELECTOR, "#post-image input[type=file]").send_keys(str(image_path))
        wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#post-image img")))
        driver.find_element(By.CSS_SELECTOR, "#submit").click()
        tokens = wait.until(
            expected_conditions.presence_of_all_elements_located((By.CSS_SELECTOR, "#entities .token.highlighted"))
        )
        time.sleep(0.5)  # let the last tokens render
        tokens = driver.find_elements(By.CSS_SELECTOR, "#entities .token.highlighted")
        shown = [
            (token.find_element(By.CSS_SELECTOR, ".text").text, token.find_element(By.CSS_SELECTOR, ".label").text)
            for token in tokens
        ]
        assert shown == expected
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)
