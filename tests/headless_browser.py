"""A real headless Chromium for the dashboard test, driven over the DevTools protocol: open a page,
wait (in real time; Streamlit talks over a websocket) until texts appear, read it, screenshot it."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import subprocess
import time
from pathlib import Path

import httpx
import websockets


def open_page(chromium: str, url: str, debug_port: int, expect: list, timeout_s: float,
              screenshot: Path) -> tuple[str, str]:
    """(visible text, HTML) once every `expect` text (a string, or a compiled pattern to search
    for) is on the page or `timeout_s` passed."""
    browser = subprocess.Popen([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                f"--remote-debugging-port={debug_port}", "--window-size=1400,2600", url],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                pages = [t for t in httpx.get(f"http://127.0.0.1:{debug_port}/json", timeout=2).json()
                         if t.get("type") == "page"]
                if pages:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chromium's DevTools endpoint did not come up within 30 s")
            time.sleep(0.3)
        return asyncio.run(_drive(pages[0]["webSocketDebuggerUrl"], expect, timeout_s, screenshot))
    finally:
        browser.terminate()
        browser.wait(timeout=10)


async def _drive(ws_url: str, expect: list, timeout_s: float, screenshot: Path) -> tuple[str, str]:
    async with websockets.connect(ws_url, max_size=64 * 2**20) as ws:
        ids = itertools.count(1)

        async def call(method: str, **params) -> dict:
            number = next(ids)
            await ws.send(json.dumps({"id": number, "method": method, "params": params}))
            while True:
                message = json.loads(await ws.recv())
                if message.get("id") == number:
                    return message.get("result", {})

        async def evaluate(expression: str) -> str:
            result = await call("Runtime.evaluate", expression=expression, returnByValue=True)
            return result.get("result", {}).get("value") or ""

        deadline = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < deadline:
            text = await evaluate("document.body.innerText")
            if all(e in text if isinstance(e, str) else e.search(text) for e in expect):
                break
            await asyncio.sleep(1)
        await asyncio.sleep(2)  # let the charts finish drawing
        html = await evaluate("document.documentElement.outerHTML")
        shot = await call("Page.captureScreenshot", format="png")
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        return text, html
