"""Streamlit pieces shared by the pages: the cached facade, the login gate, the current user, small renderers."""

from __future__ import annotations

import hashlib
import json
import re
import time

import streamlit as st

from pathasst.core.settings import Settings
from pathasst.ui.config import UISettings
from pathasst.ui.facade import Facade

__all__ = ["anchor", "current_user", "facade", "gate", "require_login", "sidebar", "status_badge"]

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


def gate() -> bool:
    """Render the login form when a login is required and nobody is signed in; True when the page may render."""
    fac = facade()
    mode = fac.login_mode
    if mode == "none":
        return True
    if mode == "oidc":
        if _oidc_user():
            return True
        st.title("PathAsst case review")
        st.write("Sign in with your organisation's account to open cases.")
        st.button("Log in", type="primary", on_click=st.login)
        return False
    if st.session_state.get("auth_user"):
        return True
    st.title("PathAsst case review")
    st.subheader("Sign in")
    locked_until = st.session_state.get("login_locked_until", 0.0)
    if time.time() < locked_until:
        st.error(f"Too many failed attempts: try again in {int(locked_until - time.time()) + 1} s.")
        return False
    with st.form("login", clear_on_submit=False):
        user = st.text_input("User", key="login_user")
        password = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        if fac.check_password(user, password):
            st.session_state["auth_user"] = user.strip()
            st.session_state.pop("login_attempts", None)
            st.rerun()
        attempts = st.session_state.get("login_attempts", 0) + 1
        st.session_state["login_attempts"] = attempts
        if attempts >= fac.ui.max_login_attempts:
            st.session_state["login_locked_until"] = time.time() + fac.ui.lockout_s
            st.session_state["login_attempts"] = 0
        st.error("Wrong user or password.")
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


def _logout() -> None:
    for key in ("auth_user", "login_password", "login_user"):
        st.session_state.pop(key, None)


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
            st.text_input("Reviewer name", key="reviewer_name", help="Recorded with edits and sign-off.")
        root = str(fac.settings.cases_root or "not configured")
        st.caption(f"Cases: `{root}`  \nOutputs: `{fac.out_dir}`  \nPlanner: `{fac.planner_name}`")


def status_badge(status: str) -> str:
    return f":{_STATUS_COLOURS.get(status, 'gray')}-badge[{status}]"


def anchor(call_id: str) -> None:
    """An HTML anchor for a tool call id (links in findings jump here)."""
    if _ANCHOR_RE.match(call_id):
        st.markdown(f'<span id="{call_id}"></span>', unsafe_allow_html=True)
