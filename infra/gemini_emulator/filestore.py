"""Files API storage: File records (metadata in memory, bytes on disk), upload sessions, File JSON.

No HTTP here. Bytes always live on disk under the emulator's data dir, because batch result files
can be gigabytes; the store only tracks paths, sizes and hashes. Every file belongs to the API key
that created it: any other key gets the same 403 as for a file that does not exist, which is how
the real API answers for missing, foreign and expired files alike. Callers hold the state lock.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import string
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from infra.gemini_emulator import errors
from infra.gemini_emulator.wire import rfc3339

UPLOADED, GENERATED = "UPLOADED", "GENERATED"
CHUNK_GRANULARITY = 8 * 1024 * 1024  # X-Goog-Upload-Chunk-Granularity; the SDK's CHUNK_SIZE
MAX_FILE_BYTES = 2 * 1024**3  # documented per-file limit
_ID_ALPHABET = string.ascii_lowercase + string.digits
FILE_ID_LENGTH = 12
# types.File docstring: at most 40 chars, lowercase alphanumeric or dashes, no dash at either end.
_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
# Any type/subtype (parameters allowed), plus the bare "jsonl" the batch docs tell users to send.
_MIME_RE = re.compile(r"^[A-Za-z0-9][\w.+-]*/[\w.+-]+(?:\s*;.*)?$")


def random_id(length: int) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def sha256_field(hex_digest: str) -> str:
    """``sha256Hash`` as the real API writes it: base64 of the *ASCII hex* digest, not of the raw one."""
    return base64.b64encode(hex_digest.encode("ascii")).decode("ascii")


def valid_mime_type(mime_type: str) -> bool:
    return mime_type == "jsonl" or bool(_MIME_RE.match(mime_type))


def file_not_found(file_id: str) -> errors.ApiError:
    return errors.ApiError(403, f"You do not have permission to access the File {file_id} or it may not exist.")


@dataclass
class FileRecord:
    id: str  # without the files/ prefix
    owner: str  # API key
    path: Path
    mime_type: str
    size: int
    sha256_hex: str
    source: str  # UPLOADED | GENERATED
    created: float  # emulator clock
    expires: float  # emulator clock
    seq: int  # creation order, for list order and page tokens
    display_name: str | None = None


@dataclass
class UploadSession:
    id: str
    owner: str
    file_id: str
    mime_type: str
    declared_size: int | None
    path: Path
    display_name: str | None = None
    received: int = 0
    hasher: Any = field(default_factory=hashlib.sha256)
    busy: bool = False  # a chunk is being written; the SDK never overlaps chunks


class FileStore:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.records: dict[str, FileRecord] = {}
        self.sessions: dict[str, UploadSession] = {}
        self._seq = 0
        self.uploaded = 0
        self.generated = 0
        self.deleted = 0
        self.expired = 0
        self.downloads = 0
        self.bytes_uploaded = 0
        # The most recent downloads: file, Range header, bytes before a cut (GET /_emulator/downloads).
        self.download_log: deque[dict] = deque(maxlen=100)

    # --- ids and paths -------------------------------------------------------------------

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def taken(self, file_id: str) -> bool:
        return file_id in self.records or any(s.file_id == file_id for s in self.sessions.values())

    def new_file_id(self) -> str:
        while True:
            file_id = random_id(FILE_ID_LENGTH)
            if not self.taken(file_id):
                return file_id

    def path_for(self, file_id: str) -> Path:
        return self.dir / f"file-{file_id}"

    # --- upload sessions -----------------------------------------------------------------

    def open_session(
        self, *, owner: str, file_id: str | None, mime_type: str, declared_size: int | None, display_name: str | None
    ) -> UploadSession:
        """Validate the start request and create an empty session file; raises 400/409."""
        if not valid_mime_type(mime_type):
            raise errors.invalid_argument(f"Unsupported MIME type: {mime_type}")
        if declared_size is not None and declared_size > MAX_FILE_BYTES:
            raise errors.invalid_argument(f"File size {declared_size} exceeds the limit of {MAX_FILE_BYTES} bytes.")
        if file_id is None:
            file_id = self.new_file_id()
        elif not _NAME_RE.match(file_id):
            raise errors.invalid_argument(
                f"Invalid file name files/{file_id}: at most 40 characters, lowercase letters, digits "
                "or dashes, not starting or ending with a dash."
            )
        elif self.taken(file_id):
            raise errors.ApiError(409, f"File files/{file_id} already exists.")
        session_id = "AU" + secrets.token_hex(16)
        session = UploadSession(
            id=session_id,
            owner=owner,
            file_id=file_id,
            mime_type=mime_type,
            declared_size=declared_size,
            path=self.dir / f"upload-{session_id}",
            display_name=display_name,
        )
        session.path.touch()
        self.sessions[session_id] = session
        return session

    def drop_session(self, session: UploadSession) -> None:
        self.sessions.pop(session.id, None)
        _unlink(session.path)

    def finish_session(self, session: UploadSession, *, now: float, ttl_s: float) -> FileRecord:
        """Turn a fully received session into an ACTIVE file (its bytes are moved, not copied)."""
        if session.declared_size is not None and session.received != session.declared_size:
            raise errors.invalid_argument(
                f"Upload finalized after {session.received} bytes, but {session.declared_size} were declared."
            )
        record = FileRecord(
            id=session.file_id,
            owner=session.owner,
            path=self.path_for(session.file_id),
            mime_type=session.mime_type,
            size=session.received,
            sha256_hex=session.hasher.hexdigest(),
            source=UPLOADED,
            created=now,
            expires=now + ttl_s,
            seq=self.next_seq(),
            display_name=session.display_name,
        )
        os.replace(session.path, record.path)
        self.sessions.pop(session.id, None)
        self.records[record.id] = record
        self.uploaded += 1
        self.bytes_uploaded += record.size
        return record

    # --- records -------------------------------------------------------------------------

    def add_generated(
        self, *, file_id: str, owner: str, path: Path, size: int, sha256_hex: str, now: float, ttl_s: float
    ) -> FileRecord:
        """Register a file the emulator wrote itself (a batch's results), moving it into place."""
        record = FileRecord(
            id=file_id,
            owner=owner,
            path=self.path_for(file_id),
            mime_type="application/jsonl",
            size=size,
            sha256_hex=sha256_hex,
            source=GENERATED,
            created=now,
            expires=now + ttl_s,
            seq=self.next_seq(),
        )
        os.replace(path, record.path)
        self.records[file_id] = record
        self.generated += 1
        return record

    def expire(self, now: float) -> None:
        """Files past their expirationTime are gone, as on the real API after 48 h."""
        for record in [r for r in self.records.values() if r.expires <= now]:
            self._remove(record)
            self.expired += 1

    def lookup(self, file_id: str, owner: str, now: float) -> FileRecord:
        self.expire(now)
        record = self.records.get(file_id)
        if record is None or record.owner != owner:
            raise file_not_found(file_id)
        return record

    def delete(self, file_id: str, owner: str, now: float) -> None:
        self._remove(self.lookup(file_id, owner, now))
        self.deleted += 1

    def owned_by(self, owner: str, now: float) -> list[FileRecord]:
        """The owner's files, newest first."""
        self.expire(now)
        return sorted((r for r in self.records.values() if r.owner == owner), key=lambda r: -r.seq)

    def _remove(self, record: FileRecord) -> None:
        self.records.pop(record.id, None)
        # A batch reading this file as input holds its own hard link, so this never breaks it.
        _unlink(record.path)

    def clear(self) -> None:
        """Forget everything and delete every byte this store put on disk."""
        for record in list(self.records.values()):
            self._remove(record)
        for session in list(self.sessions.values()):
            self.drop_session(session)

    def live_bytes(self) -> int:
        """Bytes of live files and of uploads under way, the project's file storage in use."""
        return sum(r.size for r in self.records.values()) + sum(
            s.declared_size or s.received for s in self.sessions.values()
        )

    def snapshot(self) -> dict[str, Any]:
        return {
            "created": self.uploaded + self.generated,
            "uploaded": self.uploaded,
            "generated": self.generated,
            "deleted": self.deleted,
            "expired": self.expired,
            "live": len(self.records),
            "live_bytes": sum(r.size for r in self.records.values()),
            "bytes_uploaded": self.bytes_uploaded,
            "downloads": self.downloads,
            "upload_sessions_open": len(self.sessions),
        }


def file_resource(record: FileRecord, *, base_url: str, version: str, wall: Callable[[float], float]) -> dict[str, Any]:
    """The File JSON of the real API. ``uri``/``downloadUri`` point at this emulator (built from
    the request's Host), so a client that fetches ``downloadUri`` itself reaches it."""
    body: dict[str, Any] = {"name": f"files/{record.id}"}
    if record.display_name:
        body["displayName"] = record.display_name
    body.update(
        {
            "mimeType": record.mime_type,
            "sizeBytes": str(record.size),
            "createTime": rfc3339(wall(record.created)),
            "updateTime": rfc3339(wall(record.created)),
            "expirationTime": rfc3339(wall(record.expires)),
            "sha256Hash": sha256_field(record.sha256_hex),
            "uri": f"{base_url}/{version}/files/{record.id}",
            "state": "ACTIVE",
            "source": record.source,
        }
    )
    if record.source == GENERATED:
        body["downloadUri"] = f"{base_url}/download/{version}/files/{record.id}:download?alt=media"
    return body


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
