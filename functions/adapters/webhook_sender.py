"""Webhook POSTs over the standard library's http.client: no redirects followed, a timeout on
connect and on every read, and the SSRF check done on the addresses actually connected to.

The host is resolved once, every address it resolves to must be public (unless private hosts
are allowed: local stacks and tests), and the connection goes to that vetted address while TLS
still verifies the certificate against the host name (PinnedConnection, through http.client's
public connect() hook). Resolving again inside the HTTP client would let a name that rebinds
between the check and the connect reach an internal address.
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

from core.errors import DeliveryFailed
from core.webhooks import forbidden_address

USER_AGENT = "imagefleet-webhooks/1"


class HttpWebhookSender:
    def __init__(
        self,
        *,
        timeout: float,
        allow_private: bool = False,
        resolve: Callable[..., list] = socket.getaddrinfo,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.timeout = timeout
        self.allow_private = allow_private
        self.resolve = resolve
        self.tls_context = tls_context or ssl.create_default_context()

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        https = parts.scheme.lower() == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if https else 80)
        address = host if self.allow_private else self._vetted_address(host, port)
        conn = PinnedConnection(host, port, address=address, timeout=self.timeout,
                                tls_context=self.tls_context if https else None)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("POST", target, body=body, headers={**headers, "User-Agent": USER_AGENT})
            response = conn.getresponse()
            status, retry_after = response.status, response.getheader("Retry-After")
        except TimeoutError:
            raise DeliveryFailed(f"no answer within {self.timeout:g}s") from None
        except ssl.SSLError as e:
            raise DeliveryFailed(f"TLS error: {e.reason or e}") from None
        except http.client.HTTPException as e:
            raise DeliveryFailed(f"not an HTTP answer: {type(e).__name__}") from None
        except OSError as e:
            raise DeliveryFailed(f"connection failed: {e.strerror or type(e).__name__}") from None
        finally:
            conn.close()
        if 200 <= status < 300:
            return
        if 300 <= status < 400:
            raise DeliveryFailed(f"HTTP {status}: redirects are not followed; update the callback_url")
        raise DeliveryFailed(f"HTTP {status}", retry_after=_seconds(retry_after), permanent=status == 410)

    def _vetted_address(self, host: str, port: int) -> str:
        try:
            infos = self.resolve(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            raise DeliveryFailed(f"cannot resolve {host}: {getattr(e, 'strerror', None) or e}") from None
        addresses = [info[4][0] for info in infos]
        if not addresses:
            raise DeliveryFailed(f"cannot resolve {host}")
        for address in addresses:
            # Any non-public address refuses the host: an attacker could mix one into the answer.
            if forbidden_address(ipaddress.ip_address(address.split("%", 1)[0])):
                raise DeliveryFailed(f"{host} resolves to a non-public address")
        return addresses[0]


def _seconds(retry_after: str | None) -> float | None:
    """Retry-After in seconds when it is given as a number (an HTTP date is ignored)."""
    try:
        return max(0.0, float(retry_after)) if retry_after else None
    except ValueError:
        return None


class PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to a given address that speaks to it as `host`: the Host header, the
    TLS server name (SNI) and the certificate check all use the host name, while the TCP
    connection goes to `address` and never to a second lookup. Only `connect()`, the documented
    hook that opens `sock`, is overridden."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float,
                 tls_context: ssl.SSLContext | None = None) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address
        self.tls_context = tls_context
        if tls_context is not None:
            self.default_port = http.client.HTTPS_PORT  # Host: names no port when it is 443

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as http.client's own connect()
        if self.tls_context is not None:
            try:
                # server_hostname is the name, not the address: the certificate must carry it
                # (check_hostname of a default context), so a vetted IP proves nothing alone.
                sock = self.tls_context.wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise
        self.sock = sock
