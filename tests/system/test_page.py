"""The customers' page at /v1/me/, driven in a real headless Chromium (Debian's
chromium and chromium-driver; nothing downloads a browser) against the demo
server, the Firestore emulator and the Firebase Auth emulator.

``KEYSTORE_SCREENSHOT_DIR`` keeps the page's screenshot there (docs/ holds one).
"""

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from keystore import Settings
from tests.conftest import PROJECT, AuthEmulator, Emulator, running_server

#: Read at import: the suite's fixtures clear KEYSTORE_* variables.
SHOTS = os.environ.get("KEYSTORE_SCREENSHOT_DIR")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _missing() -> str | None:
    if os.path.exists(CHROMIUM) and os.path.exists(DRIVER):
        return None
    return "Debian's chromium and chromium-driver are not installed"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    missing = _missing()
    if missing:
        # CI sets it up (emulator.sh test); elsewhere, say what is missing.
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # as root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1100,900",
        f"--user-data-dir={tmp_path / 'profile'}",
        # Nothing but this machine: no name resolves, 127.0.0.1 aside.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=Service(DRIVER, log_output=str(tmp_path / "chromedriver.log")),
        options=options,
    )
    try:
        yield driver
    finally:
        driver.quit()


def until(driver: WebDriver, test: Callable[[WebDriver], object]) -> None:
    WebDriverWait(driver, 15, poll_frequency=0.1).until(test)


def test_a_customer_signs_up_makes_uses_and_revokes_a_key(
    browser: WebDriver,
    settings: Settings,
    emulator: Emulator,
    auth_emulator: AuthEmulator,
    tmp_path: Path,
) -> None:
    env = {
        "FIRESTORE_EMULATOR_HOST": emulator.host,
        "FIREBASE_AUTH_EMULATOR_HOST": auth_emulator.host,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "KEYSTORE_COLLECTION": settings.collection,
        "KEYSTORE_OWNERS_COLLECTION": settings.owners_collection,
        "KEYSTORE_USAGE_FLUSH_INTERVAL": "0.2",
    }
    with running_server(tmp_path, env) as server:
        page = browser
        page.get(f"{server.base}/v1/me/")
        page.find_element(By.ID, "email").send_keys(
            f"dana-{os.urandom(4).hex()}@example.com"
        )
        page.find_element(By.ID, "password").send_keys("secret-password")
        page.find_element(By.ID, "sign-up-button").click()
        until(page, lambda d: d.find_element(By.ID, "account").is_displayed())

        page.find_element(By.ID, "key-name").send_keys("laptop")
        page.find_element(By.ID, "create-button").click()
        until(page, lambda d: d.find_element(By.ID, "new-key-value").text)
        key = page.find_element(By.ID, "new-key-value").text
        until(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#keys tr")) == 1)
        page.find_element(By.ID, "copy").click()
        until(page, lambda d: d.find_element(By.ID, "status").text)
        assert page.find_element(By.ID, "status").text == "Copied."

        for _ in range(3):
            r = httpx.get(f"{server.base}/v1/whoami", headers={"x-api-key": key})
            assert r.status_code == 200, r.text

        def counted(driver: WebDriver) -> bool:
            driver.find_element(By.ID, "refresh").click()
            time.sleep(0.2)
            return driver.find_element(By.ID, "total-uses").text == "3"

        until(page, counted)
        assert page.find_elements(By.CSS_SELECTOR, "#chart rect")
        page.save_screenshot(str(Path(SHOTS or tmp_path) / "self-service.png"))

        page.find_element(By.CSS_SELECTOR, "#keys tr button.revoke").click()
        until(page, lambda d: not d.find_elements(By.CSS_SELECTOR, "#keys tr"))
        assert not page.find_element(By.ID, "new-key").is_displayed()
        r = httpx.get(f"{server.base}/v1/whoami", headers={"x-api-key": key})
        assert r.status_code == 401, r.text
    assert key not in server.output  # the key is never logged
