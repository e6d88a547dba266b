"""On a Space, uploads are for the owner: Gradio's upload route takes a file from anyone who can reach
the page (any type, up to the size cap) and serves it back by URL, before any handler of ours runs, so
the deny-by-default gate on handlers (tuning/ui/access.py) never sees it. This ASGI middleware refuses
a POST to the upload route unless the request comes from an owner:

- signed in with Hugging Face as an allowed user (Gradio's OAuth session cookie), or
- holding the owner pass that unlocking with the Space's password sets as a cookie in that browser
  (`owner_pass_js`); the pass expires with the unlocked session.

Off a Space (local, or behind --auth) everything passes: whoever reached the page may upload.
"""

from __future__ import annotations

import json
import secrets
import time
from http.cookies import SimpleCookie

from tuning.ship import space

COOKIE = "tuning_owner_pass"
UPLOAD_PATH = "/gradio_api/upload"
REFUSED = ("Uploads on this Space are for its owner: sign in with Hugging Face or unlock with the Space's "
           "password first.")

# Sets the pass in this browser: a Space's page lives in an iframe of huggingface.co, where only a
# Secure, SameSite=None cookie (partitioned to that embedding) is sent back; over plain http (a local
# Space-mode test) a Strict one.
OWNER_PASS_JS = """(pass) => {
  if (!pass) return;
  const https = location.protocol === "https:";
  document.cookie = "%s=" + pass + "; path=/; max-age=%d" +
    (https ? "; Secure; SameSite=None; Partitioned" : "; SameSite=Strict");
}"""


def owner_pass_js(ttl_s: int) -> str:
    return OWNER_PASS_JS % (COOKIE, ttl_s)


def issue_pass(ctx, ttl_s: float) -> str:
    """A new owner pass, valid for `ttl_s`; expired ones are dropped here (the store stays small)."""
    now = time.time()
    token = secrets.token_urlsafe(32)
    with ctx.lock:
        for old in [t for t, expires in ctx.owner_passes.items() if expires < now]:
            del ctx.owner_passes[old]
        ctx.owner_passes[token] = now + ttl_s
    return token


def _holds_pass(ctx, headers: dict) -> bool:
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get(b"cookie", b"").decode("latin-1"))
    except Exception:  # noqa: BLE001 - a malformed cookie header holds no pass
        return False
    morsel = cookie.get(COOKIE)
    if morsel is None:
        return False
    expires = ctx.owner_passes.get(morsel.value)
    return expires is not None and expires >= time.time()


def _signed_in_owner(ctx, scope) -> bool:
    session = scope.get("session")  # set by the SessionMiddleware Gradio adds for OAuth
    if not session:
        return False
    try:
        from gradio import oauth

        info = oauth._get_valid_oauth_info_from_session(session)
        profile = oauth.OAuthProfile(info["userinfo"]) if info else None
    except Exception:  # noqa: BLE001 - no readable session: not signed in
        return False
    return profile is not None and space.can_train(profile, ctx.settings)


class UploadGate:
    """ASGI middleware: on a Space, a POST to Gradio's upload route from a non-owner gets 403."""

    def __init__(self, app, ctx):
        self.app, self.ctx = app, ctx

    async def __call__(self, scope, receive, send):
        if (scope["type"] == "http" and scope.get("method") == "POST" and self.ctx.settings.train_requires_auth
                and scope.get("path", "").rstrip("/").endswith(UPLOAD_PATH)
                and not _holds_pass(self.ctx, dict(scope.get("headers", [])))
                and not _signed_in_owner(self.ctx, scope)):
            body = json.dumps({"detail": REFUSED}).encode()
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
