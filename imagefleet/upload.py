"""A prompt file too big for one request, uploaded to Cloud Storage for the API to read as a
job's ``source``: under a name made of its content's sha256, create-only, so submitting the same
file again uploads nothing and an object once named can never change under a job."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass

from imagefleet import inputs
from imagefleet.client import ClientError

# The API's defaults (functions/config.py MAX_ITEMS_PER_JOB and MAX_BODY_BYTES): a file past
# either goes as a source.
MAX_BODY_ITEMS = 10_000
MAX_BODY_BYTES = 10 * 1024 * 1024
SOURCE_BUCKET_ENV = "IMAGEFLEET_SOURCE_BUCKET"
# gs://bucket or gs://bucket/prefix (https://cloud.google.com/storage/docs/buckets#naming).
_BUCKET_URI = re.compile(r"^gs://([a-z0-9][a-z0-9._-]{1,220}[a-z0-9])(?:/(.*))?$")


class UploadError(ClientError):
    """The file could not be uploaded (no credentials, no such bucket, no permission, ...)."""


@dataclass(frozen=True)
class Destination:
    bucket: str
    prefix: str  # "" or "a/b" (no leading or trailing slash)

    def name(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        return f"{self.prefix}/{digest}.jsonl" if self.prefix else f"{digest}.jsonl"


def parse_destination(value: str) -> Destination:
    match = _BUCKET_URI.match(value.strip())
    if not match:
        raise UploadError(f"--source-bucket must be gs://bucket or gs://bucket/prefix, not {value[:80]!r}")
    prefix = (match.group(2) or "").strip("/")
    if re.search(r"[\x00-\x1f\x7f]", prefix):
        raise UploadError("--source-bucket: the prefix holds a control character")
    return Destination(match.group(1), prefix)


def fits_one_request(body: dict) -> bool:
    """Whether the API takes this POST /v1/jobs body in one request (as the client sends it)."""
    if len(body.get("requests", ())) > MAX_BODY_ITEMS:
        return False
    return len(json.dumps(body).encode()) <= MAX_BODY_BYTES


def render_jsonl(prompts: list[inputs.Prompt]) -> bytes:
    """The items as JSONL, each on the line of the file it came from (blank lines between), so
    the API's line numbers, and the names it gives lines without a key, are the file's own.
    The CLI has parsed and checked the file (and applied --aspect-ratio and the like): the
    server reads exactly the items a request body would have held, whatever the input format."""
    out: list[str] = []
    for p in prompts:
        line = p.line if p.line > len(out) else len(out) + 1
        out += [""] * (line - len(out) - 1)
        # ASCII escapes: a lone surrogate in a field the CLI does not check (quality, say) stays
        # writable, and the API refuses it as it would in a request body.
        out.append(json.dumps(p.item, separators=(",", ":")))
    return ("\n".join(out) + "\n").encode()


def upload(data: bytes, dest: Destination, project: str | None = None) -> str:
    """The gs:// URI of `data` under its content name, uploaded unless an object of that name
    and the same MD5 is there already."""
    import google.auth.exceptions
    from google.api_core import exceptions as gexc
    import google.cloud.storage as storage

    try:
        client = storage.Client(project=project or os.environ.get("GOOGLE_CLOUD_PROJECT"))
    except google.auth.exceptions.DefaultCredentialsError:
        raise UploadError("no Google credentials to upload the prompt file: run "
                          "`gcloud auth application-default login`; for the local stack, set STORAGE_EMULATOR_HOST"
                          ) from None
    name = dest.name(data)
    uri = f"gs://{dest.bucket}/{name}"
    blob = client.bucket(dest.bucket).blob(name)
    try:
        _create_once(blob, data, uri, gexc)
    except gexc.NotFound:
        raise UploadError(f"gs://{dest.bucket}: no such bucket") from None
    except gexc.Forbidden as exc:
        # Also what an uploader without storage.objects.get may be told for a create over an
        # existing name (https://cloud.google.com/storage/docs/request-preconditions): say both.
        raise UploadError(f"{uri}: refused ({exc.message}); uploading needs roles/storage.objectCreator on the "
                          "bucket, and uploading the same file again may also need roles/storage.objectViewer"
                          ) from None
    except gexc.GoogleAPICallError as exc:
        raise UploadError(f"{uri}: the upload failed: {exc.message}") from None
    return uri


def _create_once(blob, data: bytes, uri: str, gexc) -> None:
    if _same_object_there(blob, data, uri, gexc):
        return
    try:
        # if_generation_match=0: create only, so a retry after a lost answer cannot write twice.
        blob.upload_from_string(data, content_type="application/jsonl", if_generation_match=0)
    except gexc.PreconditionFailed:
        _same_object_there(blob, data, uri, gexc)  # another upload of the same file won the race


def _same_object_there(blob, data: bytes, uri: str, gexc) -> bool:
    """True when the object is there with these bytes. An uploader holding only
    roles/storage.objectCreator may not read objects (no storage.objects.get:
    https://cloud.google.com/storage/docs/access-control/iam-roles): then it cannot tell, and
    the create-only upload decides (412: there already)."""
    try:
        if not blob.exists():
            return False
        blob.reload()
    except gexc.Forbidden:
        return False
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()  # noqa: S324 - GCS's own checksum field
    if blob.md5_hash != md5:
        # Someone wrote other bytes under this content's name: never submit them as ours.
        raise UploadError(f"{uri} exists with other content than the file's; delete it or use another prefix")
    return True
