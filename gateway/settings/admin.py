"""``admin``: the admin API on the admin listener."""

from __future__ import annotations

from gateway.settings.base import SecretRef, Strict


class AdminSettings(Strict):
    """The admin API (revocation) on the admin listener; never open."""

    token: SecretRef | None = None  # bearer token for /admin/*; None: admin API disabled
