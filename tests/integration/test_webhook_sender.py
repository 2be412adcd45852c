"""The webhook sender against real HTTP(S) servers on this machine: what it sends, how it reads
each kind of answer, and the SSRF check on the address it connects to."""
from __future__ import annotations

import datetime as dt
import http.server
import socket
import ssl
import threading
from collections.abc import Callable, Iterator

import pytest

from adapters import webhook_sender
from adapters.webhook_sender import HttpWebhookSender
from core.errors import DeliveryFailed

HEADERS = {"Content-Type": "application/json", "webhook-id": "j.completed.r1", "webhook-timestamp": "1",
           "webhook-signature": "v1,abc="}


class Receiver:
    """An HTTP server on 127.0.0.1 answering each request with answer(handler); records them."""

    def __init__(self, answer: Callable[[http.server.BaseHTTPRequestHandler], None], tls: ssl.SSLContext | None = None):
        self.requests: list[dict] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                answer(self)

            do_GET = do_POST  # noqa: N815 - a followed redirect would arrive as a GET

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def status(code: int, **headers: str) -> Callable:
    def answer(handler) -> None:
        handler.send_response(code)
        for name, value in headers.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return answer


@pytest.fixture
def local_sender() -> HttpWebhookSender:
    return HttpWebhookSender(timeout=5, allow_private=True)


def test_a_2xx_is_delivered_and_the_request_is_what_was_asked(local_sender):
    with Receiver(status(204)) as r:
        local_sender.post(f"http://127.0.0.1:{r.port}/hooks/in?token=t1", b'{"type":"job.completed"}', HEADERS)

    [got] = r.requests
    assert got["path"] == "/hooks/in?token=t1" and got["body"] == b'{"type":"job.completed"}'
    headers = {name.lower(): value for name, value in got["headers"].items()}
    assert {name: headers[name] for name in ("content-type", "webhook-id", "webhook-timestamp", "webhook-signature")} \
        == {name.lower(): value for name, value in HEADERS.items()}
    assert headers["user-agent"] == webhook_sender.USER_AGENT
    assert headers["content-length"] == str(len(got["body"]))


@pytest.mark.parametrize("answer, reason, retry_after, permanent", [
    (status(500), "HTTP 500", None, False),
    (status(404), "HTTP 404", None, False),
    (status(429, Retry_After="7"), "HTTP 429", 7.0, False),
    (status(503, Retry_After="Wed, 21 Oct 2015 07:28:00 GMT"), "HTTP 503", None, False),
    (status(410), "HTTP 410", None, True),
])
def test_anything_but_2xx_is_a_failure(local_sender, answer, reason, retry_after, permanent):
    with Receiver(answer) as r, pytest.raises(DeliveryFailed) as e:
        local_sender.post(f"http://127.0.0.1:{r.port}/", b"{}", HEADERS)

    assert (e.value.reason, e.value.retry_after, e.value.permanent) == (reason, retry_after, permanent)


def test_redirects_are_not_followed(local_sender):
    with Receiver(status(200)) as target, \
            Receiver(status(307, Location=f"http://127.0.0.1:{target.port}/elsewhere")) as r, \
            pytest.raises(DeliveryFailed, match="HTTP 307: redirects are not followed"):
        local_sender.post(f"http://127.0.0.1:{r.port}/", b"{}", HEADERS)

    assert len(r.requests) == 1 and target.requests == []


def test_a_receiver_that_never_answers_times_out():
    release = threading.Event()
    sender = HttpWebhookSender(timeout=0.5, allow_private=True)
    with Receiver(lambda handler: release.wait(10)) as r:
        try:
            with pytest.raises(DeliveryFailed, match=r"no answer within 0.5s"):
                sender.post(f"http://127.0.0.1:{r.port}/", b"{}", HEADERS)
        finally:
            release.set()


def test_a_closed_port_is_a_connection_failure(local_sender):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once it is closed

    with pytest.raises(DeliveryFailed, match="connection failed"):
        local_sender.post(f"http://127.0.0.1:{port}/", b"{}", HEADERS)


def test_a_host_resolving_to_a_private_address_is_never_connected_to():
    sender = HttpWebhookSender(timeout=5)  # the cloud's setting: private hosts refused
    with Receiver(status(200)) as r:
        with pytest.raises(DeliveryFailed, match="resolves to a non-public address"):
            sender.post(f"http://127.0.0.1:{r.port}/", b"{}", HEADERS)
        public_then_private = HttpWebhookSender(timeout=5, resolve=lambda host, port, **kw: [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))])
        with pytest.raises(DeliveryFailed, match="resolves to a non-public address"):
            public_then_private.post(f"http://rebinding.example.com:{r.port}/", b"{}", HEADERS)
        def unknown(host, port, **kw):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        with pytest.raises(DeliveryFailed, match="cannot resolve no-such-host.example.com: Name or service not known"):
            HttpWebhookSender(timeout=5, resolve=unknown).post("http://no-such-host.example.com/", b"{}", HEADERS)

    assert r.requests == []


def test_the_connection_goes_to_the_vetted_address_not_a_second_lookup(monkeypatch):
    lookups = []

    def resolve(host, port, **kw):
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    # This test's receiver is on loopback: let the vetting pass it, as it would a public address.
    monkeypatch.setattr(webhook_sender, "forbidden_address", lambda address: False)
    sender = HttpWebhookSender(timeout=5, resolve=resolve)
    with Receiver(status(200)) as r:
        sender.post(f"http://hooks.example.invalid:{r.port}/x", b"{}", HEADERS)

    assert lookups == ["hooks.example.invalid"]  # .invalid never resolves: only the vetted address was used
    assert r.requests[0]["headers"]["Host"] == f"hooks.example.invalid:{r.port}"


# --- TLS ---------------------------------------------------------------------------------------


def self_signed(folder, common_name: str, alt_names: list) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a self-signed certificate for alt_names (x509 general names), and
    a client context that trusts only that certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return server, client


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> Iterator[tuple[ssl.SSLContext, ssl.SSLContext]]:
    """A certificate for hooks.example.invalid."""
    from cryptography import x509

    yield self_signed(tmp_path_factory.mktemp("tls"), "hooks.example.invalid",
                      [x509.DNSName("hooks.example.invalid")])


@pytest.fixture(scope="module")
def tls_for_the_address(tmp_path_factory) -> Iterator[tuple[ssl.SSLContext, ssl.SSLContext]]:
    """A certificate for the address 127.0.0.1 only, with no host name in it."""
    import ipaddress

    from cryptography import x509

    yield self_signed(tmp_path_factory.mktemp("tls-ip"), "127.0.0.1",
                      [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])


def loopback(host, port, **kw):
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]


def test_https_to_the_vetted_address_still_checks_the_certificate_against_the_host(tls, monkeypatch):
    server, client = tls
    monkeypatch.setattr(webhook_sender, "forbidden_address", lambda address: False)
    sender = HttpWebhookSender(timeout=5, resolve=loopback, tls_context=client)
    with Receiver(status(200), tls=server) as r:
        sender.post(f"https://hooks.example.invalid:{r.port}/tls", b"{}", HEADERS)
        with pytest.raises(DeliveryFailed, match="TLS error"):
            # The same server under a name its certificate does not carry.
            sender.post(f"https://other.example.invalid:{r.port}/tls", b"{}", HEADERS)
        with pytest.raises(DeliveryFailed, match="TLS error"):
            # The system's trust store does not know this self-signed certificate.
            HttpWebhookSender(timeout=5, resolve=loopback).post(
                f"https://hooks.example.invalid:{r.port}/tls", b"{}", HEADERS)

    assert [req["path"] for req in r.requests] == ["/tls"]


def test_the_certificate_is_checked_against_the_host_name_not_the_vetted_address(tls_for_the_address, monkeypatch):
    server, client = tls_for_the_address
    monkeypatch.setattr(webhook_sender, "forbidden_address", lambda address: False)
    with Receiver(status(200), tls=server) as r:
        # The certificate is good for the address itself: a URL naming the address is delivered...
        HttpWebhookSender(timeout=5, allow_private=True, tls_context=client).post(
            f"https://127.0.0.1:{r.port}/by-address", b"{}", HEADERS)
        # ...but a host name that resolves to that address is not: the name is what is checked.
        with pytest.raises(DeliveryFailed, match="TLS error"):
            HttpWebhookSender(timeout=5, resolve=loopback, tls_context=client).post(
                f"https://hooks.example.invalid:{r.port}/by-name", b"{}", HEADERS)

    assert [req["path"] for req in r.requests] == ["/by-address"]


def test_the_host_header_of_https_on_443_names_no_port():
    conn = webhook_sender.PinnedConnection("hooks.example.com", 443, address="203.0.113.7", timeout=1,
                                           tls_context=ssl.create_default_context())
    sent = []
    conn.send = sent.append  # nothing is connected: record what would go on the wire
    conn.putrequest("POST", "/x")
    conn.endheaders()

    assert b"Host: hooks.example.com\r\n" in b"".join(sent)
