"""Streamlit pieces shared by the pages: the cached facade, the login gate, the current user, small renderers."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np
import streamlit as st
from PIL import Image

from pathasst.core.settings import Settings
from pathasst.ui.case_server import ensure_server
from pathasst.ui.config import UISettings
from pathasst.ui.facade import Facade, LoginError
from pathasst.ui.sessions import COOKIE

__all__ = [
    "anchor",
    "case_server_url",
    "current_user",
    "facade",
    "gate",
    "inline_image",
    "reauthenticate",
    "require_login",
    "sidebar",
    "signed_in",
    "status_badge",
    "tile_authorizer",
]

#: cookie that remembers the reviewer's name when the app has no login
REVIEWER_COOKIE = "pathasst_reviewer"

_STATUS_COLOURS = {"new": "blue", "analysed": "orange", "signed off": "green", "failed": "red"}
_ANCHOR_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@st.cache_resource(show_spinner=False)
def _facade(key: str) -> Facade:
    return Facade(Settings(), UISettings())


def facade() -> Facade:
    """The facade for the current environment (one per distinct configuration, shared by all sessions)."""
    s, u = Settings(), UISettings()
    secret = u.password_hash.get_secret_value() if u.password_hash else ""
    key = json.dumps(
        [str(s.cases_root), str(s.output_dir), s.planner, u.model_dump_json(exclude={"password_hash"}),
         hashlib.sha256(secret.encode()).hexdigest()]
    )
    return _facade(key)


def _oidc_user() -> str | None:
    user = getattr(st, "user", None)
    if user is not None and user.get("is_logged_in"):
        return str(user.get("email") or user.get("name") or user.get("sub") or "signed-in user")
    return None


def _set_cookie(name: str, value: str, max_age_s: int) -> None:
    """Set (``max_age_s`` > 0) or clear a cookie of this host from the browser (SameSite=Strict, path /)."""
    st.iframe(  # an HTML string runs in a same-origin frame, so it may set the app's cookie
        f"<script>document.cookie = {json.dumps(f'{name}={value}; Path=/; SameSite=Strict; Max-Age={max_age_s}')};"
        "</script>",
        height=1,
    )


def _flush_cookies() -> None:
    """Write the cookie changes a sign-in or sign-out left for this run.

    The session cookie is written on every run until the browser's request carries it: the writing frame runs its
    script asynchronously, and a rerun that came first would otherwise unmount it unrun (a reload would then sign
    the reviewer out). An unchanged frame stays mounted across reruns, so the script runs once per page, not per run.
    """
    fac = facade()
    token = st.session_state.get("auth_token")
    if token and _cookie(COOKIE) != token:
        _set_cookie(COOKIE, token, int(fac.ui.session_hours * 3600))
    if st.session_state.pop("cookie_clear", False):
        _set_cookie(COOKIE, "", 0)
    if (name := st.session_state.pop("reviewer_cookie", None)) is not None:
        _set_cookie(REVIEWER_COOKIE, quote(name), 365 * 24 * 3600)


def _cookie(name: str) -> str | None:
    value = st.context.cookies.get(name)
    return value if isinstance(value, str) else None  # (bare-mode test runs have no request behind them)


def _address() -> str | None:
    value = st.context.ip_address
    return value if isinstance(value, str) else None


def _session_token() -> str | None:
    return st.session_state.get("auth_token") or _cookie(COOKIE)


def _start_session(user: str) -> None:
    token = facade().sessions.create(user)
    st.session_state.update(auth_user=user, auth_token=token)


def signed_in() -> bool:
    """Whether the page may render, without drawing anything (the login form is :func:`gate`)."""
    fac = facade()
    if fac.login_mode == "none":
        return True
    if fac.login_mode == "oidc":
        return _oidc_user() is not None
    return fac.session_user(_session_token()) is not None


def gate() -> bool:
    """Render the login form when a login is required and nobody is signed in; True when the page may render.

    A sign-in is a server-side session kept in a cookie, so it survives a reload and a deep link (the page's URL is
    left as it is while the form shows). Failed logins count per user and per address across browser sessions.
    """
    fac = facade()
    mode = fac.login_mode
    _flush_cookies()
    if mode == "none":
        return True
    token = _session_token()
    user = fac.session_user(token)
    if mode == "oidc":
        oidc = _oidc_user()
        if oidc:
            if user != oidc:
                _start_session(oidc)  # a session of our own, so the tile server knows the user too
                _flush_cookies()
            return True
        st.title("PathAsst case review")
        st.write("Sign in with your organisation's account to open cases.")
        st.button("Log in", type="primary", on_click=st.login)
        return False
    if user:
        st.session_state.update(auth_user=user, auth_token=token)
        return True
    for key in ("auth_user", "auth_token"):
        st.session_state.pop(key, None)
    st.title("PathAsst case review")
    st.subheader("Sign in")
    with st.form("login", clear_on_submit=False):
        name = st.text_input("User", key="login_user")
        password = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        try:
            token = fac.sign_in(name, password, _address())
        except LoginError as exc:
            st.error(str(exc))
        else:
            st.session_state.update(auth_user=fac.session_user(token), auth_token=token)
            st.session_state.pop("login_password", None)
            st.rerun()
    return False


def require_login() -> None:
    """Stop a page when a login is required and nobody is signed in (pages also run behind ``gate``)."""
    if not gate():
        st.stop()


def current_user() -> str:
    """The signed-in user, else the reviewer name typed in the sidebar ('' when none)."""
    fac = facade()
    if fac.login_mode == "password":
        return str(st.session_state.get("auth_user") or "")
    if fac.login_mode == "oidc":
        return _oidc_user() or ""
    return str(st.session_state.get("reviewer_name") or "").strip()


def reauthenticate(password: str) -> str | None:
    """The signed-in user when ``password`` is right (sign-off asks again), else an error message to show."""
    fac = facade()
    if fac.login_mode != "password":
        return None
    try:
        fac.verify(current_user(), password, _address())
    except LoginError as exc:
        return str(exc)
    return None


def tile_authorizer() -> Callable[[Any, Any], str | None]:
    """For the companion tile server: the user behind a request's session cookie (None: refuse)."""
    fac = facade()
    return lambda headers, _address: fac.authorize_request(headers.get("Cookie"))


#: addresses of an app whose browser is on this machine, so it reaches the loopback case server
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def case_server_url() -> str | None:
    """The companion case server (tiles, layers, exports; behind the session) when this browser reaches it: the app
    listens on loopback and the tiled viewer is on. None otherwise (pages then fall back to Streamlit's own views)."""
    fac = facade()
    if fac.ui.viewer == "static" or st.get_option("server.address") not in _LOOPBACK:
        return None
    try:
        return ensure_server(fac, tile_authorizer(), app_port=st.get_option("server.port"))
    except OSError as exc:
        st.warning(f"The tiled viewer and export links are not available ({exc}): using the static views.")
        return None


def _logout() -> None:
    facade().sessions.revoke(st.session_state.get("auth_token"))
    for key in ("auth_user", "auth_token", "login_password", "login_user"):
        st.session_state.pop(key, None)
    st.session_state["cookie_clear"] = True


def _remember_reviewer() -> None:
    st.session_state["reviewer_cookie"] = str(st.session_state.get("reviewer_name") or "").strip()


def sidebar() -> None:
    fac = facade()
    with st.sidebar:
        mode = fac.login_mode
        if mode == "password":
            st.caption(f"Signed in as **{current_user()}**")
            st.button("Sign out", on_click=_logout)
        elif mode == "oidc":
            st.caption(f"Signed in as **{current_user()}**")
            st.button("Sign out", on_click=st.logout)
        else:
            if "reviewer_name" not in st.session_state:  # remembered in this browser across reloads
                st.session_state["reviewer_name"] = unquote(_cookie(REVIEWER_COOKIE) or "")
            st.text_input("Reviewer name", key="reviewer_name", on_change=_remember_reviewer,
                          help="Recorded with edits and sign-off; remembered in this browser.")
        root = str(fac.settings.cases_root or "not configured")
        st.caption(f"Cases: `{root}`  \nOutputs: `{fac.out_dir}`  \nPlanner: `{fac.planner_name}`")


def inline_image(source: np.ndarray | str | Path, *, alt: str, caption: str | None = None, max_side: int | None = None,
                 target: Any = None) -> bool:
    """Show an image inline (a data URI over the signed-in session) rather than through Streamlit's ``/media`` URLs,
    which answer without a session. False when ``source`` cannot be read."""
    try:
        im = Image.fromarray(np.ascontiguousarray(source)) if isinstance(source, np.ndarray) else Image.open(source)
        im = im.convert("RGB")
        if max_side:
            im.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
    except (OSError, ValueError):
        return False
    uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    where = target if target is not None else st
    where.markdown(f'<img src="{uri}" alt="{html.escape(alt)}" style="max-width:100%">', unsafe_allow_html=True)
    if caption:
        where.caption(caption)
    return True


def status_badge(status: str) -> str:
    return f":{_STATUS_COLOURS.get(status, 'gray')}-badge[{status}]"


def anchor(call_id: str) -> None:
    """An HTML anchor for a tool call id (links in findings jump here)."""
    if _ANCHOR_RE.match(call_id):
        st.markdown(f'<span id="{call_id}"></span>', unsafe_allow_html=True)
