"""A job's images from Cloud Storage into a folder, resumably.

The job's manifest (``gs://bucket/job/manifest.jsonl``, one line per item with its ``sha256``)
is the list: a file already on disk whose sha256 matches is kept, anything else is fetched,
checked against the manifest and renamed into place, so the folder never holds half a file.
Local names are ``<key>.<ext>`` with the key checked against the API's own pattern and the
extension taken from the stored object's name (``.png``, ``.jpg`` or ``.webp``: the worker
stores the format the model returned): nothing else the server sends is used as a path.

Downloads use google-cloud-storage with Application Default Credentials; with
``STORAGE_EMULATOR_HOST`` set (the local stack), the same code reads the GCS emulator,
anonymously.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from imagefleet.inputs import RESERVED_KEYS

KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_GS_URI = re.compile(r"^gs://([a-z0-9][a-z0-9._-]{1,220}[a-z0-9])/(.+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MANIFEST_NAME = "manifest.jsonl"
IMAGE_EXTENSIONS = ("png", "jpg", "webp")
DOWNLOAD_WORKERS = 4

Fetch = Callable[[str], bytes]  # gs://bucket/name -> the object's bytes


class DownloadError(Exception):
    """A download that cannot start (no credentials, no manifest to read); one line."""

    exit_code = 1


@dataclass(frozen=True)
class Entry:
    """One item of a job, as its manifest (or, before there is one, its status) tells it."""

    key: str
    prompt: str
    state: str
    gcs_uri: str | None = None
    sha256: str | None = None
    error: str | None = None

    @property
    def file_name(self) -> str | None:
        """``<key>.<ext>`` for a safe key, the extension of its stored object (one we store,
        else ``png``); None for anything that could be a path."""
        if not KEY_PATTERN.match(self.key or ""):
            return None
        suffix = (self.gcs_uri or "").rpartition(".")[2].lower()
        return f"{self.key}.{suffix if suffix in IMAGE_EXTENSIONS else 'png'}"


@dataclass
class Report:
    out: Path
    verified: bool  # True: checked against the manifest's sha256
    fetched: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line each


def parse_gs_uri(uri: str) -> tuple[str, str]:
    match = _GS_URI.match(uri or "")
    if not match:
        raise ValueError(f"not a gs://bucket/object URI: {uri!r}")
    return match.group(1), match.group(2)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def entries_from_manifest(data: bytes) -> list[Entry]:
    entries = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            entries.append(Entry(key=str(row["key"]), prompt=str(row.get("prompt") or ""), state=str(row["state"]),
                                 gcs_uri=row.get("gcs_uri"), sha256=row.get("sha256"), error=row.get("error")))
        except (ValueError, KeyError, TypeError) as exc:
            raise DownloadError(f"the job's manifest line {number} is not a manifest entry: {exc}") from None
    return entries


def entries_from_status(items: Iterable[dict]) -> list[Entry]:
    return [Entry(key=str(it["key"]), prompt=str(it.get("prompt") or ""), state=str(it["state"]),
                  gcs_uri=it.get("gcs_uri"), error=it.get("error")) for it in items]


def write_atomically(path: Path, data: bytes) -> None:
    """Write beside the target, then rename: a reader (or a resumed run) never sees half a file.
    (Not mkstemp: its files are private to the user, and images are not.)"""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def download(entries: list[Entry], out: Path, fetch: Fetch, *, manifest: bytes | None = None,
             workers: int = DOWNLOAD_WORKERS, on_file: Callable[[str, str], None] | None = None) -> Report:
    """Every succeeded entry's image into ``out/<key>.<ext>``. With the manifest's bytes, files are
    checked against its sha256 (kept when they match, fetched and checked when they don't) and
    the manifest is saved beside them; without one (a job still running), each image is fetched.
    ``on_file(key, "fetched" | "kept" | "problem")`` is called as each one is done."""
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob(".*.part"):  # from a run that was killed mid-write
        leftover.unlink(missing_ok=True)
    report = Report(out=out, verified=manifest is not None)
    todo: list[tuple[Entry, str, str]] = []  # the entry, its file name, its gcs_uri
    names: dict[str, str] = {}  # file name ignoring case -> the key that has it
    for entry in entries:
        if entry.state != "succeeded":
            continue
        name = entry.file_name
        if name is None:
            report.problems.append(f"item {entry.key[:80]!r}: its key is not a safe file name; skipped")
            continue
        # Jobs accepted before the API refused these keys: never overwrite the manifest, the
        # contact sheet or another image (macOS and Windows disks ignore case).
        if entry.key.lower() in RESERVED_KEYS:
            report.problems.append(f"{entry.key}: its key is a name this folder reserves; skipped")
            continue
        if (other := names.setdefault(name.lower(), entry.key)) != entry.key:
            report.problems.append(f"{entry.key}: {name} is the file of {other} on a case-insensitive disk; skipped")
            continue
        if not entry.gcs_uri:
            report.problems.append(f"{entry.key}: succeeded but has no gcs_uri")
            continue
        if manifest is not None and not _SHA256.match(entry.sha256 or ""):
            report.problems.append(f"{entry.key}: the manifest has no sha256 for it")
            continue
        todo.append((entry, name, entry.gcs_uri))

    def one(entry: Entry, file_name: str, gcs_uri: str) -> tuple[str, str]:
        path = out / file_name
        if report.verified and path.is_file() and sha256_file(path) == entry.sha256:
            return "kept", ""
        try:
            data = fetch(gcs_uri)
        except DownloadError as exc:
            return "problem", f"{entry.key}: {exc}"
        if report.verified:
            got = hashlib.sha256(data).hexdigest()
            if got != entry.sha256:
                path.unlink(missing_ok=True)  # a file that isn't the image the manifest names
                return "problem", (f"{entry.key}: the downloaded image's sha256 is {got[:12]}…, the manifest "
                                   f"says {(entry.sha256 or '')[:12]}…; not saved")
        write_atomically(path, data)
        return "fetched", ""

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for (entry, _, _), (outcome, problem) in zip(todo, pool.map(lambda t: one(*t), todo), strict=True):
            if outcome == "kept":
                report.kept.append(entry.key)
            elif outcome == "fetched":
                report.fetched.append(entry.key)
            else:
                report.problems.append(problem)
            if on_file:
                on_file(entry.key, outcome)
    if manifest is not None:
        write_atomically(out / MANIFEST_NAME, manifest)
    return report


def gcs_fetcher(project: str | None = None) -> Fetch:
    """Read gs:// objects with google-cloud-storage: Application Default Credentials in the
    cloud, the emulator (anonymously) when STORAGE_EMULATOR_HOST is set. Reading an object
    needs no project; ``project`` is passed through for quota attribution when given."""
    import google.auth.exceptions
    from google.api_core import exceptions as gexc
    import google.cloud.storage as storage

    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    try:
        client = storage.Client(project=project)
    except google.auth.exceptions.DefaultCredentialsError:
        raise DownloadError(
            "no Google credentials to read the images from Cloud Storage: run "
            "`gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS); "
            "for the local stack, set STORAGE_EMULATOR_HOST") from None
    where = f"the GCS emulator at {emulator}" if emulator else "Cloud Storage"

    def fetch(uri: str) -> bytes:
        try:
            bucket, name = parse_gs_uri(uri)
        except ValueError as exc:
            raise DownloadError(str(exc)) from None
        try:
            return client.bucket(bucket).blob(name).download_as_bytes()
        except gexc.NotFound:
            raise DownloadError(f"{uri} is not in {where}") from None
        except (gexc.Forbidden, gexc.Unauthorized) as exc:
            raise DownloadError(f"no access to {uri}: {getattr(exc, 'message', exc)}") from None
        except google.auth.exceptions.GoogleAuthError as exc:
            raise DownloadError(f"no Google credentials to read {uri}: {exc}") from None
        except gexc.GoogleAPICallError as exc:
            raise DownloadError(f"reading {uri}: {exc.code} {getattr(exc, 'message', exc)}") from None
        except OSError as exc:  # requests' ConnectionError is an OSError
            raise DownloadError(f"cannot reach {where} for {uri}: {type(exc).__name__}") from None

    return fetch
