"""Drives the operator console in a real browser (headless Chromium through Selenium), as an
on-call engineer would: signs in with a token, finds a group of parked events on the overview,
retries it (preview, then confirm), and watches one of its events become delivered.

    console_browser.py URL TOKEN GROUP EVENT_ID SCREENSHOT_DIR [--timeout SECONDS]

Prints one JSON object with what the pages said; saves overview.png, preview.png, done.png and
event.png in SCREENSHOT_DIR; exits 1 with the reason on standard error when a step fails.
"""

import argparse
import json
import os
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def fail(reason, driver=None, shots=None):
    if driver is not None and shots is not None:
        driver.save_screenshot(os.path.join(shots, "failure.png"))
    print(reason, file=sys.stderr)
    sys.exit(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("group")
    parser.add_argument("event_id")
    parser.add_argument("shots")
    parser.add_argument("--timeout", type=float, default=30)
    args = parser.parse_args()
    os.makedirs(args.shots, exist_ok=True)
    url = args.url.rstrip("/")
    seen = {}
    driver = browser()
    # A click returns before the next page has loaded (more so on a busy machine): each lookup
    # waits up to 30 s for an element only the expected page has.
    driver.implicitly_wait(30)
    try:
        driver.get(url + "/")
        if "/login" not in driver.current_url:
            fail(f"signed out, the overview sent us to {driver.current_url}, not the sign-in page", driver, args.shots)
        driver.find_element(By.NAME, "token").send_keys(args.token)
        driver.find_element(By.ID, "sign-in").click()
        driver.find_element(By.CSS_SELECTOR, "table")  # the overview
        rows = [row for row in driver.find_elements(By.CSS_SELECTOR, "tr") if args.group in row.text]
        if not rows:
            fail("the overview shows no group with that error:\n" + driver.find_element(By.TAG_NAME, "main").text, driver, args.shots)
        seen["group"] = rows[0].text
        driver.save_screenshot(os.path.join(args.shots, "overview.png"))
        rows[0].find_element(By.CSS_SELECTOR, "button[value=unpark]").click()
        seen["preview"] = driver.find_element(By.ID, "preview").text
        driver.save_screenshot(os.path.join(args.shots, "preview.png"))
        driver.find_element(By.CSS_SELECTOR, "button[value=unpark]").click()
        seen["result"] = driver.find_element(By.ID, "result").text
        driver.save_screenshot(os.path.join(args.shots, "done.png"))
        deadline = time.monotonic() + args.timeout
        while True:
            driver.get(f"{url}/events/{args.event_id}")
            status = driver.find_element(By.ID, "status").text
            if status == "delivered" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        seen["status"] = status
        driver.save_screenshot(os.path.join(args.shots, "event.png"))
        if status != "delivered":
            fail(f"the event is still {status} after {args.timeout:.0f} s", driver, args.shots)
    except WebDriverException as error:
        fail(f"the browser: {error.msg}", driver, args.shots)
    finally:
        driver.quit()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
