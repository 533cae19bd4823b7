"""Who may reach a server: no bind beyond loopback without authentication, no root that exposes the machine.

Used by every front end that listens (``pathasst mcp --transport http``, ``pathasst ui``) or serves files from a
root folder; both fail closed and name the setting or flag that opens them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pathasst.core.settings import is_loopback

__all__ = ["SYSTEM_FOLDERS", "InsecureBindError", "check_bind", "refuse_system_root"]

log = logging.getLogger(__name__)

#: folders no server may take as its root: the file system root, system folders and the home folder itself
SYSTEM_FOLDERS = ("/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/root", "/run", "/sbin", "/sys",
                  "/usr", "/var")


def refuse_system_root(path: Path) -> None:
    """Raise ``ValueError`` when ``path`` (resolved) is ``/``, a system folder or inside one, the home folder or one
    of its ancestors: a root that would expose the machine rather than a folder of cases."""
    real = Path(path).resolve()
    home = Path.home().resolve()
    if str(real) in SYSTEM_FOLDERS or any(real.is_relative_to(f) for f in ("/proc", "/sys", "/dev", "/etc", "/boot")):
        raise ValueError(f"{real} is a system folder: give a folder of cases as the root")
    if real == home or real in home.parents:
        raise ValueError(f"{real} is the home folder or above it: give a folder of cases as the root")


class InsecureBindError(RuntimeError):
    """A server was asked to listen beyond loopback without authentication (and without ``--insecure-bind``)."""


def check_bind(host: str, authenticated: bool, insecure_bind: bool, how: str) -> None:
    """Refuse (:class:`InsecureBindError`) a bind beyond loopback without authentication unless ``insecure_bind``;
    ``how`` names the setting that turns authentication on."""
    if is_loopback(host) or authenticated:
        return
    if not insecure_bind:
        raise InsecureBindError(
            f"refusing to serve on {host} without authentication: the tools and every image under the root would be "
            f"reachable from other machines. Set {how}, or pass --insecure-bind on a network you trust")
    log.warning("binding to %s without authentication (--insecure-bind)", host)
