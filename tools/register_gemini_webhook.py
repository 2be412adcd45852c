"""Register imagefleet's static Gemini webhook, once per project, and print its signing secret.

    .venv/bin/python tools/register_gemini_webhook.py --uri https://<gemini_webhook URL> \\
        | gcloud secrets versions add <prefix>-gemini-webhook-secret --project <p> --data-file=-

Gemini returns the signing secret only in the answer to this call
(https://ai.google.dev/gemini-api/docs/webhooks: "the API returns a signing secret only
once"), so the secret goes to stdout and nowhere else: pipe it into Secret Manager. Everything
else (what was registered, what was already there) goes to stderr. With --replace, webhooks
already registered for the same URI are deleted first (a lost secret is replaced by a new
registration). Uses GEMINI_API_KEY (and GOOGLE_GEMINI_BASE_URL when set, as the functions do).
Exit code 1 on any failure, with nothing on stdout.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "functions")]

from core.gemini_webhooks import SUBSCRIBED_EVENTS, decode_gemini_secret  # noqa: E402


def register(client, uri: str, *, name: str = "imagefleet", replace: bool = False) -> str:
    """Create the webhook (deleting those already on `uri` when `replace`); its signing secret."""
    existing = [w for w in (client.webhooks.list().webhooks or []) if w.uri == uri]
    if existing and not replace:
        raise SystemExit(f"a webhook is already registered for {uri} ({', '.join(str(w.id) for w in existing)}); "
                         "its secret cannot be read again: pass --replace to register a new one")
    for webhook in existing:
        client.webhooks.delete(id=webhook.id)
        print(f"deleted webhook {webhook.id} on {uri}", file=sys.stderr)
    webhook = client.webhooks.create(name=name, subscribed_events=list(SUBSCRIBED_EVENTS), uri=uri)
    secret = webhook.new_signing_secret or ""
    decode_gemini_secret(secret)  # refuse to store something the receiver would refuse to start with
    print(f"registered webhook {webhook.id} on {uri} for {', '.join(SUBSCRIBED_EVENTS)}", file=sys.stderr)
    return secret


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", required=True, help="the gemini_webhook function's URL (terraform output gemini_webhook_url)")
    parser.add_argument("--name", default="imagefleet")
    parser.add_argument("--replace", action="store_true", help="delete the webhooks already on this URI first")
    args = parser.parse_args(argv)
    if not args.uri.startswith(("https://", "http://")):
        parser.error("--uri must be an http(s) URL")
    if not os.environ.get("GEMINI_API_KEY"):
        parser.error("GEMINI_API_KEY is not set")
    from google import genai
    from google.genai import types

    base_url = os.environ.get("GOOGLE_GEMINI_BASE_URL")
    client = genai.Client(http_options=types.HttpOptions(base_url=base_url) if base_url else None)
    try:
        secret = register(client, args.uri, name=args.name, replace=args.replace)
    except (ValueError, OSError) as e:
        print(f"registration failed: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(secret)
    return 0


if __name__ == "__main__":
    sys.exit(main())
