"""Running as a Hugging Face Space, or behind a public --share link: where the workspace goes and
who may train. Pure functions of the environment, so tests set SPACE_ID & co. and check them.

Policy, in one place:
- On a Space (SPACE_ID is set) the workspace is /data/tuning when persistent storage is mounted;
  otherwise an ephemeral folder, and a banner says runs are lost when the Space restarts
  (paths.workspace_location is the one workspace rule).
- Training (and pushing to the Hub) on a Space needs auth: the Space's OAuth login (README front
  matter `hf_oauth: true`; allowed users are the Space's owner or TUNING_ALLOWED_USERS) or the
  password stored in the Space secret TUNING_AUTH (or SPACE_PASSWORD). Without it a visitor may
  still browse runs and use the Playground on finished runs.
- Locally, `--share` (a public gradio.live link) or a non-loopback --host is refused unless --auth
  USER:PASS (or TUNING_AUTH=USER:PASS) is given: launch_kwargs, which app.py's main() calls.
- Secrets are only ever compared here, never returned into text the page shows or a file.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tuning import paths

PASSWORD_SECRETS = ("TUNING_AUTH", "SPACE_PASSWORD")
NOT_PERSISTENT_BANNER = ("This Space has no persistent storage: runs, adapters and exports live on a temporary "
                         "disk and are lost when the Space restarts or sleeps. Download what you want to keep "
                         "(Export tab), or enable persistent storage in the Space settings (mounted at /data).")
NEEDS_AUTH = ("Training on this Space needs you to sign in with Hugging Face (as an allowed user) or to enter "
              "the Space's password. Without it you can still browse runs and use the Playground.")


@dataclass(frozen=True)
class SpaceSettings:
    on_space: bool
    space_id: str
    workspace: Path
    persistent: bool
    banner: str                      # "" when there is nothing to warn about
    host: str
    port: int
    oauth: bool                      # the Space has OAuth enabled (gr.LoginButton works)
    allowed_users: tuple[str, ...]   # who may train when signed in with OAuth
    password_set: bool               # a password secret exists (its value is never kept here)
    train_requires_auth: bool
    _environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def password_matches(self, attempt: str | None) -> bool:
        """Constant-time check of a typed password against the whole secret: exactly, never a part
        of it (a secret "user:pass" is matched by "user:pass" alone)."""
        secret = _password(self._environ)
        if not secret or not attempt:
            return False
        return hmac.compare_digest(str(attempt).encode(), secret.encode())

    @property
    def password_length(self) -> int:
        return len(_password(self._environ))


def _password(environ: Mapping[str, str]) -> str:
    for name in PASSWORD_SECRETS:
        if environ.get(name):
            return environ[name]
    return ""


def space_settings(environ: Mapping[str, str] | None = None, data_dir: Path = paths.DATA_DIR,
                   workspace: str | Path | None = None) -> SpaceSettings:
    """What `python app.py` on a Space (or locally) should do. `workspace` is --workspace if given;
    `data_dir` is where a Space mounts persistent storage (tests point it elsewhere)."""
    environ = dict(os.environ if environ is None else environ)
    space_id = environ.get("SPACE_ID", "")
    on_space = bool(space_id)
    ws, persistent = paths.workspace_location(workspace, environ, data_dir)
    owner = environ.get("SPACE_AUTHOR_NAME", "") or (space_id.split("/")[0] if "/" in space_id else "")
    extra = [u.strip() for u in environ.get("TUNING_ALLOWED_USERS", "").split(",") if u.strip()]
    allowed = tuple(dict.fromkeys([u for u in [owner, *extra] if u]))
    return SpaceSettings(
        on_space=on_space, space_id=space_id, workspace=ws, persistent=persistent,
        banner=NOT_PERSISTENT_BANNER if on_space and not persistent else "",
        host="0.0.0.0" if on_space else "127.0.0.1", port=int(environ.get("PORT", "7860") or 7860),
        oauth=bool(environ.get("OAUTH_CLIENT_ID")), allowed_users=allowed,
        password_set=bool(_password(environ)), train_requires_auth=on_space, _environ=environ)


def username(profile: Any) -> str:
    """The user name from a gr.OAuthProfile (or a plain string/dict, for tests and --auth users)."""
    if profile is None:
        return ""
    if isinstance(profile, str):
        return profile
    name = getattr(profile, "username", None)
    if name:
        return str(name)
    if isinstance(profile, Mapping):
        return str(profile.get("preferred_username") or profile.get("username") or "")
    return ""


def can_train(profile: Any, settings: SpaceSettings, password: str | None = None) -> bool:
    """May this visitor start, stop, resume or delete runs and push to the Hub?

    `profile` is the gr.OAuthProfile (None when not signed in); `password` what they typed into the
    unlock box (or None). Off a Space everyone who reached the page may (a --share link already
    required --auth to reach it)."""
    if not settings.train_requires_auth:
        return True
    if password and settings.password_matches(password):
        return True
    name = username(profile)
    return bool(name) and name in settings.allowed_users


def refusal_message(profile: Any, settings: SpaceSettings) -> str:
    """Why can_train said no, for the page (never mentions the secret's value)."""
    name = username(profile)
    if name:
        return (f"Signed in as {name}, who is not allowed to train on this Space (allowed: "
                f"{', '.join(settings.allowed_users) or 'nobody'}; the owner sets TUNING_ALLOWED_USERS). "
                "You can still use the Playground on finished runs.")
    ways = []
    if settings.oauth:
        ways.append("sign in with Hugging Face")
    if settings.password_set:
        ways.append("enter the Space's password")
    if not ways:
        return ("Training is disabled on this Space: its owner has set neither OAuth (hf_oauth: true) nor a "
                "TUNING_AUTH secret. You can still use the Playground on finished runs.")
    return f"Training on this Space needs you to {' or '.join(ways)}. You can still use the Playground."


class LaunchRefused(ValueError):
    """A launch flag combination that would expose the app unsafely (app.py prints it as one
    `error: ...` line and exits with status 2)."""


# A Space's password is the one thing between the open internet and training on the owner's hardware:
# with guesses limited to a handful a minute (tuning/ui/access.py), 12 characters put it out of reach.
MIN_PASSWORD_CHARS = 12

MAX_FILE_SIZE = "500mb"  # the largest upload the page accepts
# On a Space the disk is shared by every visitor's uploads (Gradio's upload route takes a file before
# any handler sees it): a smaller cap per file, and a quota on the datasets the owner keeps.
SPACE_MAX_FILE_SIZE = "100mb"
# Gradio keeps each browser session's state (~0.7 MB here: the tabs' gr.State values) for its 10,000
# newest sessions by default, ~7 GB on a Space where anyone can open sessions. The newest 100 are
# kept (~70 MB); an older session's page state is dropped (its unlock lives in AppContext, not there).
SPACE_SESSION_CAPACITY = 100
SPACE_UPLOAD_BYTES = 100 * 1024 * 1024
SPACE_DATASETS_QUOTA_BYTES = 2 * 1024**3


def parse_auth(text: str | None, source: str = "--auth") -> tuple[str, str] | None:
    """--auth USER:PASS -> (user, pass); None when not given."""
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user.strip() or not password:
        raise LaunchRefused(f"{source} must look like USER:PASS, with a non-empty user and password")
    return user.strip(), password


def is_loopback(host: str) -> bool:
    """Only this machine can reach an app listening on `host`."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- hooks app.py calls ------------------------------------------------------------------------

def banner(settings: SpaceSettings | None = None) -> str:
    """Markdown for the top of the page: the storage warning on a Space without /data, else ""."""
    settings = settings or space_settings()
    return f"**Warning:** {settings.banner}" if settings.banner else ""


def launch_kwargs(args: Any, settings: SpaceSettings | None = None) -> dict:
    """demo.launch()'s arguments for app.py's flags `args` (host, port, share, auth).

    Off a Space, refuse (LaunchRefused) to expose the page without a login: `--share` or a
    non-loopback --host needs --auth USER:PASS or TUNING_AUTH=USER:PASS (which keeps the password
    out of `ps`), since anyone who reaches the page can start processes and read the allowed
    folders. On a Space: listen on 0.0.0.0:7860, no share link and no app-wide login (visitors may
    use the Playground; TUNING_AUTH / SPACE_PASSWORD is the in-page password that unlocks training,
    checked by can_train)."""
    settings = settings or space_settings()
    common = {"ssr_mode": False, "max_file_size": SPACE_MAX_FILE_SIZE if settings.on_space else MAX_FILE_SIZE}
    if settings.on_space:
        parse_auth(args.auth)  # a malformed --auth is still an error, though a Space ignores it
        if settings.password_set and settings.password_length < MIN_PASSWORD_CHARS:
            raise LaunchRefused(f"the Space's password ({' or '.join(PASSWORD_SECRETS)}) has "
                                f"{settings.password_length} characters; a public Space needs at least "
                                f"{MIN_PASSWORD_CHARS}: set a longer secret in the Space settings")
        return {"server_name": settings.host, "server_port": settings.port, "share": False, "auth": None,
                "state_session_capacity": SPACE_SESSION_CAPACITY, **common}
    env_auth = settings._environ.get("TUNING_AUTH")
    auth = parse_auth(args.auth) or parse_auth(env_auth, source="TUNING_AUTH")
    if (args.share or not is_loopback(args.host)) and auth is None:
        what = "--share" if args.share else f"--host {args.host}"
        raise LaunchRefused(f"{what} makes the page reachable by others; add --auth USER:PASS (or set "
                            "TUNING_AUTH=USER:PASS) so only you can start runs and read your data")
    return {"server_name": args.host, "server_port": args.port, "share": bool(args.share), "auth": auth, **common}
