"""The chat page at `/` driven by a real headless Chromium: API key, image upload, a streamed answer that
appears piece by piece, a second turn with the history; both answers equal the API's for the same input.

Chromium is driven through the DevTools protocol over a pipe (`--remote-debugging-pipe`: JSON
messages separated by NUL bytes on file descriptors 3 and 4), so no driver package is needed.
Skipped when no Chromium is installed (Debian / Ubuntu: `apt-get install -y chromium`).

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_serve_browser.py
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from PIL import Image

from conftest import randomized
from llavakit.model.modeling import LlavaKitForCausalLM
from llavakit.processing.processor import LlavaKitProcessor
from llavakit.serve.app import create_app
from llavakit.serve.chat import load_chat_model
from llavakit.serve.server import BackgroundServer
from llavakit.serve.settings import ServeSettings
from llavakit.tiny import tiny_llava_config

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
KEY = "page-key"
MODEL = "tiny-llava"
MAX_TOKENS = 48


def find_chromium() -> str | None:
    """$LLAVAKIT_CHROMIUM, else the first Chromium or Chrome on the PATH."""
    for name in (os.environ.get("LLAVAKIT_CHROMIUM"), *BROWSERS):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


pytestmark = [
    pytest.mark.skipif(
        find_chromium() is None,
        reason="no Chromium or Chrome on the PATH (Debian/Ubuntu: apt-get install -y chromium; "
        "or set LLAVAKIT_CHROMIUM to the browser's path)",
    ),
    pytest.mark.usefixtures("one_torch_thread"),
]


# Starts a program with two inherited descriptors moved to 3 and 4, where Chromium reads and writes
# the DevTools pipe (copied above 9 first, so that neither move overwrites the other).
_ON_FDS_3_AND_4 = (
    "import fcntl, os, sys\n"
    "read, write = (fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3])\n"
    "os.dup2(read, 3)\n"
    "os.dup2(write, 4)\n"
    "os.execvp(sys.argv[3], sys.argv[3:])\n"
)


class Browser:
    """Headless Chromium and its DevTools protocol over a pipe; `call` sends a command and waits for its answer."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser, self._to_browser = os.pipe()
        self._from_browser, from_browser = os.pipe()
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
        flags += [f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        self.process = subprocess.Popen(
            [sys.executable, "-c", _ON_FDS_3_AND_4, str(to_browser), str(from_browser), binary, *flags],
            pass_fds=(to_browser, from_browser),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            data = os.read(self._from_browser, 1 << 20)
            if not data:
                raise ConnectionError("Chromium closed the DevTools pipe")
            self._buffer += data
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0):
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._message(deadline)
            if answer.get("id") == self._next_id:  # events and other answers are not needed here
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError, ConnectionError):
            self.call("Browser.close", timeout=5)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


class Page:
    """One tab: evaluate JavaScript, wait for a condition, put files into a file input."""

    def __init__(self, browser: Browser, url: str) -> None:
        self.browser = browser
        target = browser.call("Target.createTarget", {"url": url})["targetId"]
        self.session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def call(self, method: str, params: dict | None = None):
        return self.browser.call(method, params, self.session)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.05)
        return value

    def set_files(self, selector: str, paths: list[Path]) -> None:
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        self.call("DOM.setFileInputFiles", {"nodeId": node, "files": [str(path) for path in paths]})

    def type_into(self, selector: str, text: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.call("Input.insertText", {"text": text})


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("serve_browser")
    config = tiny_llava_config(tiny_tokenizer.convert_tokens_to_ids("<image>"))
    randomized(LlavaKitForCausalLM(config), seed=3).save_pretrained(root / "ckpt")
    LlavaKitProcessor.from_model_config(tiny_tokenizer, config, "vicuna_v1").save_pretrained(root / "ckpt")
    photo = root / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(photo)
    settings = ServeSettings(model_name=MODEL, api_key=KEY)
    with BackgroundServer(create_app(*load_chat_model(root / "ckpt"), settings)) as server:
        yield server, photo


@pytest.fixture()
def page(served, tmp_path):
    server, _ = served
    browser = Browser(find_chromium(), tmp_path / "profile")
    try:
        yield Page(browser, server.url + "/")
    finally:
        browser.close()


# Records the growing text of the last answer at every change of the page.
WATCH_ANSWERS = """
window.seenLengths = [];
new MutationObserver(() => {
  const answers = document.querySelectorAll('.message.assistant .text');
  if (answers.length) window.seenLengths.push(answers[answers.length - 1].textContent.length);
}).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});
"""


def ask_on_page(page: Page, question: str, answers_before: int) -> str:
    page.type_into("#question", question)
    page.evaluate("document.getElementById('send').click()")
    page.wait_for(f"document.querySelectorAll('.message.assistant.done').length === {answers_before + 1}")
    return page.evaluate("[...document.querySelectorAll('.message.assistant .text')].pop().textContent")


def test_upload_an_image_ask_and_see_the_streamed_answer(served, page, tmp_path):
    server, photo = served
    page.wait_for("location.protocol === 'http:' && document.readyState === 'complete'")
    assert page.wait_for("document.getElementById('status').textContent").startswith("Missing API key")
    page.evaluate(
        f"const key = document.getElementById('api-key'); key.value = {json.dumps(KEY)};"
        "key.dispatchEvent(new Event('change'))"
    )
    assert page.wait_for(f"document.getElementById('model-name').textContent === {json.dumps(MODEL)}")
    page.evaluate(f"document.getElementById('max-tokens').value = '{MAX_TOKENS}'")

    page.set_files("#file", [photo])
    assert page.wait_for("document.querySelectorAll('#previews img').length") == 1
    page.evaluate(WATCH_ANSWERS)
    first = ask_on_page(page, "What is in the picture?", 0)
    seen = page.evaluate("window.seenLengths")
    assert len({length for length in seen if length}) > 1, f"the answer did not stream in: {seen}"
    assert page.evaluate("document.querySelectorAll('.message.user img').length") == 1
    second = ask_on_page(page, "Describe it in detail.", 1)
    screenshot = page.call("Page.captureScreenshot", {"format": "png"})["data"]
    (tmp_path / "chat.png").write_bytes(base64.b64decode(screenshot))

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    image = {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(photo.read_bytes()).decode()},
    }
    history = [{"role": "user", "content": [image, {"type": "text", "text": "What is in the picture?"}]}]
    options = dict(model=MODEL, temperature=0, max_tokens=MAX_TOKENS)
    assert first == client.chat.completions.create(messages=history, **options).choices[0].message.content
    history += [{"role": "assistant", "content": first}, {"role": "user", "content": "Describe it in detail."}]
    assert second == client.chat.completions.create(messages=history, **options).choices[0].message.content
