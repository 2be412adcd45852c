"""Webhooks as Standard Webhooks (https://www.standardwebhooks.com) define them: which callback
URLs we accept (the SSRF rules), the signing secret's format, and the signature headers.

Standard library only. The same address rules are applied twice: to the URL when a job is
submitted, and to every address its host resolves to when the webhook is sent
(adapters/webhook_sender.py), because a name that was public at submit time can resolve to an
internal address later (DNS rebinding).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from urllib.parse import urlsplit

MAX_CALLBACK_URL_CHARS = 2048
SECRET_PREFIX = "whsec_"
# The spec asks for a random secret of at least 24 bytes; we also refuse absurdly long ones.
SECRET_MIN_BYTES, SECRET_MAX_BYTES = 24, 64

# Names that reach the machine itself or the cloud's internal services, whatever they resolve
# to: localhost, the metadata server (metadata.google.internal, also plain "metadata"), GCE's
# internal DNS (*.internal) and mDNS (*.local).
_BLOCKED_NAMES = frozenset({"localhost", "metadata", "metadata.google.internal"})
_BLOCKED_SUFFIXES = (".localhost", ".internal", ".local")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# A last label that is a number (decimal or hex): resolvers read "2130706433", "0x7f.1" or
# "127.1" as IPv4 addresses, so such hosts must be plain dotted quads to be judged as one.
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_UNSAFE_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


class CallbackUrlError(ValueError):
    """The callback URL is not one we will call; the message says why (it reaches the client)."""


def forbidden_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for every address that is not a public unicast one: private, loopback, link-local
    (169.254.0.0/16 holds the metadata server), shared, multicast, reserved, unspecified. An
    IPv4 address inside IPv6 (::ffff:10.0.0.1, 64:ff9b::/96, 6to4) is judged as that address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in ipaddress.IPv6Network("64:ff9b::/96"):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return forbidden_address(embedded)
    return not address.is_global or address.is_multicast or address.is_reserved or address.is_unspecified


def check_callback_url(url: str, *, allow_insecure: bool = False) -> str:
    """The URL if we may call it, else CallbackUrlError.

    Always: an absolute http(s) URL of at most 2048 characters with a host, no credentials in
    it, no whitespace or control characters. Unless allow_insecure (local stacks and tests
    only): https only, and the host may be neither an IP literal of a non-public address nor
    a name of the machine or the cloud's internal services."""
    if len(url) > MAX_CALLBACK_URL_CHARS:
        raise CallbackUrlError(f"callback_url is {len(url)} characters; the limit is {MAX_CALLBACK_URL_CHARS}")
    if _UNSAFE_CHARS.search(url):
        raise CallbackUrlError("callback_url contains whitespace, a control character or a backslash")
    if not url.isascii():
        # A URI is ASCII (RFC 3986 section 2, https://www.rfc-editor.org/rfc/rfc3986#section-2);
        # http.client cannot send anything else in a request line, so every delivery would fail.
        raise CallbackUrlError("callback_url holds a character that is not ASCII; percent-encode it")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise CallbackUrlError(f"callback_url is not a valid URL: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.netloc:
        raise CallbackUrlError("callback_url must be an absolute https:// URL")
    if scheme == "http" and not allow_insecure:
        raise CallbackUrlError("callback_url must use https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise CallbackUrlError("callback_url must not carry credentials")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise CallbackUrlError("callback_url has no host")
    if port == 0:
        raise CallbackUrlError("callback_url has port 0")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        if not allow_insecure and forbidden_address(address):
            raise CallbackUrlError(f"callback_url's host {host[:60]} is not a public address")
        return url
    labels = host.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise CallbackUrlError(f"callback_url's host {host[:60]!r} is not a valid host name")
    if _NUMERIC_LABEL.match(labels[-1]):
        raise CallbackUrlError(f"callback_url's host {host[:60]!r} is not a valid host name or IPv4 address")
    if not allow_insecure:
        if host in _BLOCKED_NAMES or host.endswith(_BLOCKED_SUFFIXES):
            raise CallbackUrlError(f"callback_url's host {host[:60]} is an internal name")
        if len(labels) < 2:
            # A single label is completed by the resolver's search domains: an internal host.
            raise CallbackUrlError(f"callback_url's host {host[:60]} is not a fully qualified name")
    return url


# --- signing ---------------------------------------------------------------------------------


def decode_secret(secret: str) -> bytes:
    """The key bytes of a `whsec_<base64>` secret (the prefix is optional, as in the spec's
    libraries). ValueError if it is not base64 or not 24 to 64 bytes long; the message never
    contains the secret."""
    encoded = secret.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except ValueError:
        raise ValueError("the webhook secret must be whsec_ followed by base64") from None
    if not SECRET_MIN_BYTES <= len(key) <= SECRET_MAX_BYTES:
        raise ValueError(f"the webhook secret must decode to {SECRET_MIN_BYTES} to {SECRET_MAX_BYTES} bytes")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: str) -> str:
    """`v1,` + base64(HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}"))."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(key: bytes, msg_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The headers of one delivery attempt: the id stays the same across retries, the
    timestamp is the attempt's (so the receiver's replay window applies to each)."""
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": sign(key, msg_id, int(timestamp), body),
    }
