"""API keys as tenants: who a caller is, and which jobs and usage figures it may see.

API_KEYS is a comma-separated list of entries, each one of
  key                a plain key (the format before tenants): the tenant "default"
  tenant=key         a key of a named tenant
  admin:tenant=key   a key of a named tenant that also sees every tenant's jobs and usage
A tenant may hold several keys (rotation). Jobs stored before tenants existed, and every job of
a deployment without keys, belong to "default".
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEFAULT_TENANT = "default"
TENANT_NAME = r"[a-z0-9][a-z0-9_-]{0,62}"
# The key of a pair never starts with "=": a plain base64 key such as "abcd==" stays a plain key.
_PAIR = re.compile(rf"^(?:(?P<role>[a-z]+):)?(?P<tenant>{TENANT_NAME})=(?P<key>[^=].*)$")


class ApiKeysError(ValueError):
    """API_KEYS cannot be read; the message never contains a key."""


@dataclass(frozen=True)
class Caller:
    """Who sent a request: its tenant, and whether it may see every tenant."""

    tenant: str = DEFAULT_TENANT
    admin: bool = False

    @property
    def scope(self) -> str | None:
        """The tenant whose jobs and usage this caller sees; None: all of them."""
        return None if self.admin else self.tenant


LOCAL = Caller(DEFAULT_TENANT, admin=True)  # no keys configured: one tenant, which sees everything


def tenant_of_job(stored: str | None) -> str:
    return stored or DEFAULT_TENANT


def visible(job_tenant: str | None, scope: str | None) -> bool:
    return scope is None or tenant_of_job(job_tenant) == scope


def parse_api_keys(text: str | None) -> dict[str, Caller]:
    """API_KEYS as {key: caller}. Raises ApiKeysError for an unknown role or a key given twice."""
    callers: dict[str, Caller] = {}
    for number, entry in enumerate((e.strip() for e in (text or "").split(",")), start=1):
        if not entry:
            continue
        match = _PAIR.match(entry)
        if match is None:
            if "=" in entry.rstrip("="):  # base64 pads at the end only: this looks like a mistyped pair
                log.warning("API_KEYS entry %d holds '=' but is read as a plain key of the tenant %r: a "
                            "tenant name is %s", number, DEFAULT_TENANT, TENANT_NAME)
            key, caller = entry, Caller(DEFAULT_TENANT)
        else:
            role = match["role"]
            if role not in (None, "admin"):
                raise ApiKeysError(f"API_KEYS entry {number}: unknown role {role!r} (the only role is admin)")
            key, caller = match["key"].strip(), Caller(match["tenant"], admin=role == "admin")
        if key in callers and callers[key] != caller:
            raise ApiKeysError(f"API_KEYS entry {number}: the same key is given to two tenants")
        callers[key] = caller
    return callers
