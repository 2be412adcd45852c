"""Webhook signing against the Standard Webhooks reference, and the callback URL (SSRF) rules."""
import base64
import ipaddress
import json
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from core.webhooks import CallbackUrlError, check_callback_url, decode_secret, forbidden_address, sign, signed_headers

# The test vector of the spec's reference libraries (libraries/python/tests/test_webhooks.py,
# test_sign_function, in github.com/standard-webhooks/standard-webhooks).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = '{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


def test_signing_matches_the_spec_test_vector():
    assert sign(decode_secret(SPEC_SECRET), SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_the_reference_library_verifies_our_headers():
    body = json.dumps({"type": "job.completed", "data": {"job_id": "abc"}}, separators=(",", ":"))
    headers = signed_headers(decode_secret(SECRET), "abc.completed.r1", int(time.time()), body)

    assert headers["Content-Type"] == "application/json"
    assert headers["webhook-id"] == "abc.completed.r1"
    assert Webhook(SECRET).verify(body, headers) == {"type": "job.completed", "data": {"job_id": "abc"}}
    with pytest.raises(WebhookVerificationError):  # one byte of the body changed
        Webhook(SECRET).verify(body.replace("abc", "abd"), headers)
    other = "whsec_" + base64.b64encode(bytes(range(1, 33))).decode()
    with pytest.raises(WebhookVerificationError):  # another secret
        Webhook(other).verify(body, headers)


def test_secrets_must_be_base64_of_24_to_64_bytes():
    assert decode_secret(SECRET) == bytes(range(32))
    assert decode_secret(SECRET.removeprefix("whsec_")) == bytes(range(32))  # the prefix is optional
    for bad in ("whsec_not base64!", "whsec_" + base64.b64encode(b"x" * 23).decode(),
                "whsec_" + base64.b64encode(b"x" * 65).decode()):
        with pytest.raises(ValueError) as e:
            decode_secret(bad)
        assert bad.removeprefix("whsec_") not in str(e.value)  # the message never echoes the secret
    with pytest.raises(ValueError):
        decode_secret("whsec_")


# --- callback URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "https://hooks.example.com/imagefleet",
    "https://hooks.example.com:8443/a/b?token=x&y=1",
    "https://8.8.8.8/hook",
    "https://[2001:4860:4860::8888]/hook",
])
def test_public_https_urls_are_accepted(url):
    assert check_callback_url(url) == url


@pytest.mark.parametrize("url, problem", [
    ("http://hooks.example.com/x", "must use https"),
    ("ftp://hooks.example.com/x", "absolute https"),
    ("hooks.example.com/x", "absolute https"),
    ("/relative", "absolute https"),
    ("https://", "absolute https"),
    ("https://user:pw@hooks.example.com/", "credentials"),
    ("https://hooks.example.com/a b", "whitespace"),
    ("https://hooks.example.com/\x07", "control character"),
    ("https://hooks.example.com:99999/", "not a valid URL"),
    ("https://hooks.example.com:0/", "port 0"),
    ("https://exa_mple.com/", "not a valid host name"),
    ("https://-bad-.example.com/", "not a valid host name"),
    ("https://" + "a" * 2040 + ".com/", "the limit is 2048"),
])
def test_malformed_urls_are_refused(url, problem):
    with pytest.raises(CallbackUrlError, match=problem):
        check_callback_url(url)


@pytest.mark.parametrize("host", [
    "10.1.2.3", "172.16.0.1", "192.168.1.1",  # private
    "127.0.0.1", "[::1]",  # loopback
    "169.254.169.254", "[fe80::1]",  # link-local: the metadata server's address
    "100.64.0.1",  # shared address space (carrier-grade NAT)
    "0.0.0.0", "[::]",  # unspecified
    "224.0.0.1",  # multicast
    "240.0.0.1",  # reserved
    "[::ffff:10.0.0.1]", "[64:ff9b::a00:1]",  # IPv4 inside IPv6
    "[fc00::1]",  # unique local
])
def test_ip_literals_of_non_public_addresses_are_refused(host):
    with pytest.raises(CallbackUrlError, match="not a public address"):
        check_callback_url(f"https://{host}/hook")


@pytest.mark.parametrize("host", [
    "localhost", "LOCALHOST", "api.localhost", "metadata.google.internal", "metadata",
    "instance-1.us-central1-a.c.project.internal", "printer.local", "localhost.",
])
def test_internal_names_are_refused(host):
    with pytest.raises(CallbackUrlError, match="internal name|fully qualified"):
        check_callback_url(f"https://{host}/hook")


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "127.1", "0177.0.0.1", "10.0.0.1.", "1.2.3.04"])
def test_numeric_hosts_that_resolvers_read_as_addresses_are_refused(host):
    # inet_aton reads all of these as IPv4 addresses (2130706433 and 0x7f000001 are 127.0.0.1).
    with pytest.raises(CallbackUrlError):
        check_callback_url(f"https://{host}/hook")


def test_single_label_names_are_refused():
    with pytest.raises(CallbackUrlError, match="fully qualified"):
        check_callback_url("https://intranet/hook")


def test_insecure_mode_allows_http_and_private_hosts_but_not_malformed_urls():
    for url in ("http://127.0.0.1:8080/hook", "http://localhost:9000/", "https://10.0.0.5/x", "http://receiver/x"):
        assert check_callback_url(url, allow_insecure=True) == url
    for url in ("ftp://127.0.0.1/", "http://u:p@127.0.0.1/", "http://127.0.0.1/a b", "http://2130706433/"):
        with pytest.raises(CallbackUrlError):
            check_callback_url(url, allow_insecure=True)


@pytest.mark.parametrize("address, forbidden", [
    ("8.8.8.8", False), ("2001:4860:4860::8888", False), ("1.1.1.1", False),
    ("10.0.0.1", True), ("169.254.169.254", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("2002:a00:1::", True),  # 6to4 of 10.0.0.1
    ("192.0.2.1", True),  # documentation range
])
def test_forbidden_addresses(address, forbidden):
    assert forbidden_address(ipaddress.ip_address(address)) is forbidden
