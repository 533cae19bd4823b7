"""Settings of the review app, read from the environment (prefix ``PATHASST_UI_``) and ``.env``.

They sit beside ``pathasst.core.settings.Settings`` (cases root, output folder, planner, limits), which the app
reads as well. Nothing is read at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["UISettings"]


class UISettings(BaseSettings):
    """Knobs of the Streamlit review app. Environment variables are ``PATHASST_UI_<FIELD>`` (upper case)."""

    model_config = SettingsConfigDict(
        env_prefix="PATHASST_UI_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        env_parse_none_str="",
    )

    password_hash: SecretStr | None = Field(
        None,
        description="bcrypt hash of the app password; set it to require a login on every page "
        "(make one with `pathasst ui --hash-password`).",
    )
    user: str = Field("pathologist", min_length=1, description="User name that goes with the password.")
    auth: Literal["auto", "none", "password", "oidc"] = Field(
        "auto",
        description="Login mode: auto = password when a hash is set, else none; oidc = Streamlit's st.login "
        "(needs an [auth] section in .streamlit/secrets.toml).",
    )
    max_upload_mb: int = Field(
        1024, ge=1, le=65536, description="Largest file accepted by the upload form, in MB (Streamlit's "
        "server.maxUploadSize is set to the same value by `pathasst ui`)."
    )
    max_login_attempts: int = Field(
        5, ge=1, description="Failed logins allowed per user name and per client address (across browser sessions) "
        "within lockout_s before a lockout."
    )
    lockout_s: float = Field(60.0, ge=0, description="Seconds a user or address is locked out after too many failures.")
    session_hours: float = Field(8.0, gt=0, le=24 * 30, description="Lifetime of a sign-in (it survives reloads).")
    accuracy_file: Path | None = Field(
        Path("docs/tool_accuracy.json"),
        description="JSON of measured tool accuracy shown on the Tools page: {tool: {metric: value, ...}}.",
    )
    view_px: int = Field(768, ge=256, le=2048, description="Width in pixels of the static (server-rendered) view.")
    viewer: Literal["tiled", "static"] = Field(
        "tiled", description="tiled = the OpenSeadragon viewer fed by the app's loopback tile server (used when the "
        "app listens on loopback; exports are then served there too, behind the session); static = server-rendered "
        "views only.",
    )

    @field_validator("password_hash")
    @classmethod
    def _looks_like_bcrypt(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and v.get_secret_value() and not v.get_secret_value().startswith(("$2a$", "$2b$", "$2y$")):
            raise ValueError("PATHASST_UI_PASSWORD_HASH must be a bcrypt hash ($2b$...); see `pathasst ui --hash-password`")
        return v

    @property
    def login_mode(self) -> Literal["none", "password", "oidc"]:
        if self.auth == "auto":
            return "password" if self.password_hash is not None and self.password_hash.get_secret_value() else "none"
        if self.auth == "password" and not (self.password_hash and self.password_hash.get_secret_value()):
            raise ValueError("PATHASST_UI_AUTH=password needs PATHASST_UI_PASSWORD_HASH")
        return self.auth

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024
