"""Who may run which handler of the page.

Locally (and behind --auth) whoever reached the page may do everything. On a Space it is deny by
default: app.py hands the finished page to `deny_by_default`, which makes every handler of it
(buttons, changes, timers, uploads, named and unnamed API) owner-only, except those wired through
`public(...)`. That short public list is visible where each handler is wired: browsing runs,
following a run in Live, viewing evaluations, the Playground on finished runs, inspecting the demo
dataset, and signing in. An owner is a visitor signed in with Hugging Face as an allowed user, or one
who unlocked this browser session with the Space's password (tuning/ship/space.py holds the policy).

Gradio's queue runs any event function by its index, named or not, and `api_visibility="private"`
hides an endpoint from the API page without locking it: so the gate sits on the functions themselves.

Public handlers still get server-side limits (prompt length, new tokens, probes, one generation at a
time per session) and may ask `is_owner` to refuse part of their work to visitors (a non-demo
dataset, a run still training). Wrong passwords are limited for the whole Space at once, with a
growing delay (no session, address or forged header buys more guesses), and an unlocked session expires.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections import deque
from contextlib import contextmanager

from tuning import runs
from tuning.ship import space

PUBLIC = "_public_on_a_space"
UNLOCK_TTL_S = 8 * 3600  # an unlocked browser session stays unlocked this long
# Wrong passwords, counted for the whole Space (every session and address together: a client picks
# its session hash, and an address comes from X-Forwarded-For, which a client can forge through a
# local proxy). The first FREE_GUESSES in ATTEMPT_WINDOW_S go at once; after that each waits twice as
# long as the one before (5, 10, 20, ... s, at most MAX_DELAY_S): at most ~6 guesses in the first
# minute and ~1 a minute after. A 12-character password (space.MIN_PASSWORD_CHARS) is then out of
# reach. The owner signed in with Hugging Face never needs the password, so is never locked out.
ATTEMPT_WINDOW_S = 600.0
FREE_GUESSES = 3
FIRST_DELAY_S = 5.0
MAX_DELAY_S = 120.0


# What one call of a public handler takes: no single text over MAX_PUBLIC_TEXT_CHARS (a prompt is at
# most 4,000 characters, an answer ~4 characters a token of at most 1,024), and all of its text and
# values together bounded (the chat histories a long conversation sends back). Only a hand-made request
# reaches these; they are checked before the handler runs.
MAX_PUBLIC_TEXT_CHARS = 100_000
MAX_PUBLIC_INPUT_CHARS = 2_000_000
MAX_PUBLIC_INPUT_ITEMS = 10_000  # values inside lists and dicts (a chat of 40 messages is ~200)


def _run_first(fn, check):
    """`fn` with `check(args, kwargs)` called before it runs, of the same kind (plain, generator,
    coroutine, async generator) and with the same signature: Gradio reads both from the function it
    calls."""
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def async_gen(*args, **kwargs):
            check(args, kwargs)
            async for item in fn(*args, **kwargs):
                yield item
        return async_gen
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            check(args, kwargs)
            yield from fn(*args, **kwargs)
        return gen
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def coroutine(*args, **kwargs):
            check(args, kwargs)
            return await fn(*args, **kwargs)
        return coroutine

    @functools.wraps(fn)
    def plain(*args, **kwargs):
        check(args, kwargs)
        return fn(*args, **kwargs)
    return plain


def refuse_oversized(args, kwargs) -> None:
    """A gr.Error when a call's inputs (strings, nested in lists and dicts at any depth) pass the limits
    above: walked without recursion, and stopped as soon as one is passed."""
    chars, items, pending = 0, 0, [*args, *kwargs.values()]
    while pending:
        value, longest = pending.pop(), 0
        if isinstance(value, str):
            chars, longest = chars + len(value), len(value)
        elif isinstance(value, dict):
            pending.extend(value.values())
            items += len(value)
        elif isinstance(value, (list, tuple)):
            pending.extend(value)
            items += len(value)
        if longest > MAX_PUBLIC_TEXT_CHARS or chars > MAX_PUBLIC_INPUT_CHARS or items > MAX_PUBLIC_INPUT_ITEMS:
            import gradio as gr

            raise gr.Error(f"input too long: at most {MAX_PUBLIC_TEXT_CHARS:,} characters in one text and "
                           f"{MAX_PUBLIC_INPUT_CHARS:,} in all", print_exception=False)


def public(fn):
    """Open `fn` to every visitor on a Space: the one way onto the public list. Its inputs are held to
    the MAX_PUBLIC_* limits on the server, for everyone (nothing the page sends comes near them)."""
    opened = _run_first(fn, refuse_oversized)
    setattr(opened, PUBLIC, True)
    return opened


def is_public(fn) -> bool:
    return bool(getattr(fn, PUBLIC, False))


def deny_by_default(demo, ctx) -> None:
    """On a Space, make every handler of `demo` that is not public owner-only."""
    if not ctx.settings.train_requires_auth:
        return
    for block_fn in demo.fns.values():
        if block_fn.fn is not None and not is_public(block_fn.fn):
            block_fn.fn = _run_first(block_fn.fn, lambda _args, _kwargs: require_owner(ctx))


# --- who is the owner --------------------------------------------------------------------------

def _request(request=None):
    if request is None:
        from gradio.context import LocalContext

        request = LocalContext.request.get(None)
    return request


def oauth_profile(request):
    """The signed-in Hugging Face profile of a request, read the way Gradio reads it for a
    `gr.OAuthProfile` parameter (None when not signed in or without OAuth)."""
    try:
        from gradio import oauth
        from gradio.helpers import _session_from_request

        info = oauth._get_valid_oauth_info_from_session(_session_from_request(request))
        return oauth.OAuthProfile(info["userinfo"]) if info else None
    except Exception:  # noqa: BLE001 - no session, no profile: the gate then refuses
        return None


def _session(request) -> str:
    return getattr(request, "session_hash", None) or ""


def _unlocked(ctx, session: str) -> bool:
    expires = ctx.unlocked.get(session)
    if expires is not None and expires < time.time():
        ctx.unlocked.pop(session, None)
        return False
    return bool(session) and expires is not None


def owner_refusal(ctx, profile, session: str = "") -> str | None:
    """None when a visitor signed in as `profile` (None: not signed in) in browser `session` is an
    owner; else the message to show. Off a Space everyone is."""
    if not ctx.settings.train_requires_auth or _unlocked(ctx, session) or space.can_train(profile, ctx.settings):
        return None
    return space.refusal_message(profile, ctx.settings)


def refusal(ctx, request=None) -> str | None:
    """owner_refusal for the visitor behind `request` (by default the current event's)."""
    if not ctx.settings.train_requires_auth:
        return None
    request = _request(request)
    return owner_refusal(ctx, oauth_profile(request), _session(request))


def is_owner(ctx, request=None) -> bool:
    return refusal(ctx, request) is None


def require_owner(ctx, request=None) -> None:
    message = refusal(ctx, request)
    if message:
        import gradio as gr

        raise gr.Error(message, print_exception=False)


# --- the password ------------------------------------------------------------------------------

def next_guess_wait(guesses: deque, now: float) -> float:
    """Seconds until the Space takes another password (0: now), from the recent wrong ones."""
    while guesses and guesses[0] < now - ATTEMPT_WINDOW_S:
        guesses.popleft()
    over = len(guesses) - FREE_GUESSES
    if over < 0:
        return 0.0
    delay = min(FIRST_DELAY_S * 2 ** over, MAX_DELAY_S)
    return max(0.0, guesses[-1] + delay - now)


def unlock(ctx, request, password: str | None) -> str:
    """The Space's password typed into the page: this browser session is unlocked for UNLOCK_TTL_S
    if it matches. Only the expiry is kept, never the password. The wait is checked before the
    password, so a guess made too early tells nothing."""
    session, now = _session(request), time.time()
    if not password or not isinstance(password, str):  # an empty box is no guess: nothing to count
        return "**Not unlocked:** type the Space's password first."
    with ctx.lock:
        wait = next_guess_wait(ctx.guesses, now)
        if wait > 0:
            instead = " (or sign in with Hugging Face)" if ctx.settings.oauth else ""
            return (f"**Not unlocked:** too many wrong passwords on this Space; try again in {wait:.0f} s"
                    f"{instead}.")
        if session and ctx.settings.password_matches(password):
            ctx.unlocked[session] = now + UNLOCK_TTL_S
        else:
            ctx.unlocked.pop(session, None)
            ctx.guesses.append(now)
    message = refusal(ctx, request)
    return f"**Not unlocked:** {message}" if message else "Unlocked: you may train from this page."


# --- limits on what is public ------------------------------------------------------------------

def session_key(request=None) -> str:
    """The browser session behind `request` (by default the current event's); a thread's own key
    where there is none (a call from Python)."""
    return _session(_request(request)) or f"thread-{threading.get_ident()}"


@contextmanager
def one_at_a_time(ctx, what: str = "generation", request=None):
    """One `what` in flight per browser session (the queue's concurrency limit bounds them all)."""
    key = (what, session_key(request))
    with ctx.lock:
        if key in ctx.busy:
            raise runs.RunError(f"one {what} at a time: wait for the one still running in this page")
        ctx.busy.add(key)
    try:
        yield
    finally:
        with ctx.lock:
            ctx.busy.discard(key)
