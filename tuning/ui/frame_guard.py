"""Keeps an idle page from drawing 60 frames a second.

Gradio 6.31's status tracker (`statustracker-*.js`) counts a pending event's elapsed time in a
`requestAnimationFrame` loop that stops only when that tracker sees its event end. The page-level
tracker shown while the app loads is removed while still "pending", so its loop runs for the page's
whole life: 60 animation frames a second, which Chromium draws in software where there is no GPU.
On a 2-core machine that is ~7% of a core taken from training by a page that shows nothing moving
(bench/ui_overhead.py counts the frames and who asks for them; bench/RESULTS.md, UI overhead).

No Gradio setting reaches that loop, and `launch(head=...)` is inserted by the page's own scripts,
after the tracker's module has kept its reference to `requestAnimationFrame`. So this module serves
the page with one small script first in its <head>: a frame asked for directly by the status
tracker while no tracker is on screen waits a second instead (a hidden tracker's timer shows no
one anything); every other frame, and every frame while a tracker is shown, is asked for as usual.
If Gradio renames the file the script matches nothing and the page behaves as before
(tests/test_frame_guard.py fails on an idle page's frame rate).
"""

from __future__ import annotations

SCRIPT = b"""<script>
(() => {
  const askFrame = window.requestAnimationFrame.bind(window);
  const trackerShown = () => document.querySelector('[data-testid="status-tracker"]:not(.hide)') !== null;
  window.requestAnimationFrame = (callback) => {
    const caller = (new Error().stack || "").split("\\n")[2] || "";
    if (!/\\/statustracker-[\\w-]+\\.js/.test(caller) || trackerShown()) return askFrame(callback);
    return window.setTimeout(() => callback(performance.now()), 1000);
  };
})();
</script>"""


class FrameGuard:
    """ASGI middleware: puts SCRIPT first in the <head> of the page Gradio serves at its root (a
    GET of "/" answered with HTML). Everything else passes through untouched."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        root = scope.get("root_path", "").rstrip("/")
        if scope["type"] != "http" or scope.get("method") != "GET" or scope.get("path", "").rstrip("/") != root:
            await self.app(scope, receive, send)
            return
        start, chunks = {}, []

        async def with_script(message):
            if message["type"] == "http.response.start":
                start.update(message)  # sent with the body: its length changes
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            headers = dict(start.get("headers", []))
            if headers.get(b"content-type", b"").startswith(b"text/html") and b"content-encoding" not in headers:
                body = body.replace(b"<head>", b"<head>" + SCRIPT, 1)
            await send({**start, "headers": [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
                        + [(b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, with_script)


def app_kwargs() -> dict:
    """demo.launch(app_kwargs=...) for a page with the guard."""
    from starlette.middleware import Middleware

    return {"middleware": [Middleware(FrameGuard)]}
