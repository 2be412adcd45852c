"""Downloading a job into a real folder: files checked against the manifest's sha256, kept when
they match, fetched again when missing or different, never half written, never outside the
folder. Objects come from a dict standing in for the bucket (the e2e tests use the real GCS
emulator)."""
from __future__ import annotations

import hashlib
import io
import json

import pytest
from PIL import Image

from imagefleet.download import (
    DownloadError, Entry, download, entries_from_manifest, entries_from_status, parse_gs_uri, write_atomically,
)

BUCKET = "gs://demo-bucket"


def png(colour: str, size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


class Bucket:
    """gs:// URI -> bytes, counting what is fetched."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects, self.fetched = objects, []

    def fetch(self, uri: str) -> bytes:
        self.fetched.append(uri)
        if uri not in self.objects:
            raise DownloadError(f"{uri} is not in the bucket")
        return self.objects[uri]


def manifest_for(rows: list[dict]) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


@pytest.fixture
def job():
    """A job of 3 succeeded items and 1 failed one: its manifest and its bucket."""
    images = {"fox": png("orange"), "owl": png("white"), "koi": png("red")}
    rows = [{"key": k, "prompt": f"A {k}", "state": "succeeded", "gcs_uri": f"{BUCKET}/job/{k}.png",
             "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for k, data in images.items()]
    rows.append({"key": "cat", "prompt": "A cat", "state": "failed", "gcs_uri": None, "sha256": None,
                 "error": "IMAGE_SAFETY"})
    manifest = manifest_for(rows)
    bucket = Bucket({f"{BUCKET}/job/{k}.png": data for k, data in images.items()})
    return manifest, bucket, images


def test_every_succeeded_image_is_saved_by_key_with_the_manifest(tmp_path, job):
    manifest, bucket, images = job

    report = download(entries_from_manifest(manifest), tmp_path, bucket.fetch, manifest=manifest)

    assert sorted(report.fetched) == ["fox", "koi", "owl"] and report.kept == [] and report.problems == []
    for key, data in images.items():
        assert (tmp_path / f"{key}.png").read_bytes() == data
    assert not (tmp_path / "cat.png").exists()
    assert (tmp_path / "manifest.jsonl").read_bytes() == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fox.png", "koi.png", "manifest.jsonl", "owl.png"]


def test_a_second_run_fetches_only_what_is_missing_or_different(tmp_path, job):
    manifest, bucket, images = job
    entries = entries_from_manifest(manifest)
    download(entries, tmp_path, bucket.fetch, manifest=manifest)
    (tmp_path / "fox.png").unlink()
    (tmp_path / "owl.png").write_bytes(b"not the image")
    bucket.fetched.clear()

    report = download(entries, tmp_path, bucket.fetch, manifest=manifest)

    assert sorted(bucket.fetched) == [f"{BUCKET}/job/fox.png", f"{BUCKET}/job/owl.png"]
    assert sorted(report.fetched) == ["fox", "owl"] and report.kept == ["koi"]
    assert (tmp_path / "owl.png").read_bytes() == images["owl"]


def test_an_object_that_does_not_match_the_manifest_is_not_saved(tmp_path, job):
    manifest, bucket, _ = job
    bucket.objects[f"{BUCKET}/job/owl.png"] = png("black")
    (tmp_path / "owl.png").write_bytes(b"stale")

    report = download(entries_from_manifest(manifest), tmp_path, bucket.fetch, manifest=manifest)

    assert sorted(report.fetched) == ["fox", "koi"]
    assert len(report.problems) == 1 and report.problems[0].startswith("owl: the downloaded image's sha256 is")
    assert not (tmp_path / "owl.png").exists()


def test_a_failed_fetch_leaves_no_file_and_is_reported(tmp_path, job):
    manifest, bucket, _ = job
    del bucket.objects[f"{BUCKET}/job/koi.png"]

    report = download(entries_from_manifest(manifest), tmp_path, bucket.fetch, manifest=manifest)

    assert report.problems == [f"koi: {BUCKET}/job/koi.png is not in the bucket"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fox.png", "manifest.jsonl", "owl.png"]


@pytest.mark.parametrize("key", ["../escape", "a/b", ".hidden", "", "x" * 200, "C:evil", "..", "key.png"])
def test_keys_that_could_be_paths_are_never_used_as_file_names(tmp_path, key):
    data = png("blue")
    out = tmp_path / "out"
    entry = Entry(key=key, prompt="p", state="succeeded", gcs_uri=f"{BUCKET}/job/x.png",
                  sha256=hashlib.sha256(data).hexdigest())
    bucket = Bucket({f"{BUCKET}/job/x.png": data})

    report = download([entry], out, bucket.fetch, manifest=b"{}\n")

    assert bucket.fetched == [] and report.fetched == []
    assert "not a safe file name" in report.problems[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["manifest.jsonl", "out"]


def test_leftovers_of_a_killed_run_are_removed(tmp_path, job):
    manifest, bucket, _ = job
    (tmp_path / ".fox.png.abc123.part").write_bytes(b"half")

    download(entries_from_manifest(manifest), tmp_path, bucket.fetch, manifest=manifest)

    assert not list(tmp_path.glob(".*.part"))


def test_without_a_manifest_every_image_is_fetched_again(tmp_path, job):
    _, bucket, images = job
    items = [{"key": k, "prompt": f"A {k}", "state": "succeeded", "gcs_uri": f"{BUCKET}/job/{k}.png"}
             for k in images] + [{"key": "cat", "prompt": "A cat", "state": "running", "gcs_uri": None}]
    (tmp_path / "fox.png").write_bytes(images["fox"])

    report = download(entries_from_status(items), tmp_path, bucket.fetch)

    assert not report.verified
    assert sorted(report.fetched) == ["fox", "koi", "owl"]
    assert not (tmp_path / "manifest.jsonl").exists()


def test_an_unreadable_manifest_is_named_by_line():
    with pytest.raises(DownloadError, match="manifest line 2"):
        entries_from_manifest(b'{"key": "a", "state": "succeeded"}\n{"nope": 1}\n')


def test_an_atomic_write_that_fails_leaves_nothing(tmp_path):
    target = tmp_path / "x.png"
    target.write_bytes(b"before")

    with pytest.raises(TypeError):
        write_atomically(target, "not bytes")  # type: ignore[arg-type]

    assert target.read_bytes() == b"before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


@pytest.mark.parametrize("uri", ["gs://b/", "http://b/x", "gs:///x", "b/x", "gs://UPPER/x"])
def test_only_gs_uris_with_an_object_are_accepted(uri):
    with pytest.raises(ValueError):
        parse_gs_uri(uri)


def test_a_gs_uri_splits_into_bucket_and_object():
    assert parse_gs_uri("gs://demo-imagefleet-images/abc/fox.png") == ("demo-imagefleet-images", "abc/fox.png")


def test_keys_that_would_overwrite_the_folders_own_files_or_each_other_are_skipped(tmp_path):
    objects = {f"{BUCKET}/j/{k}.png": png(c) for k, c in (("K", "red"), ("k", "blue"), ("Contact-Sheet", "green"),
                                                         ("manifest", "white"))}
    bucket = Bucket(objects)
    entries = [Entry(key=k, prompt=k, state="succeeded", gcs_uri=f"{BUCKET}/j/{k}.png")
               for k in ("K", "k", "Contact-Sheet", "manifest")]
    report = download(entries, tmp_path, bucket.fetch)
    assert report.fetched == ["K"]
    assert report.problems[0] == "k: k.png is the file of K on a case-insensitive disk; skipped"
    assert sum("reserves" in p for p in report.problems) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["K.png"]


def test_each_image_is_saved_with_the_extension_of_its_stored_object(tmp_path):
    """The worker stores what the model returned: a JPEG is <key>.jpg in the bucket and on disk."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), "blue").save(buf, format="JPEG")
    images = {"sea.jpg": buf.getvalue(), "fox.png": png("orange")}
    rows = [{"key": name.split(".")[0], "prompt": name, "state": "succeeded", "gcs_uri": f"{BUCKET}/job/{name}",
             "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in images.items()]
    manifest = manifest_for(rows)
    bucket = Bucket({f"{BUCKET}/job/{name}": data for name, data in images.items()})

    report = download(entries_from_manifest(manifest), tmp_path, bucket.fetch, manifest=manifest)

    assert report.problems == [] and sorted(report.fetched) == ["fox", "sea"]
    assert (tmp_path / "sea.jpg").read_bytes() == images["sea.jpg"] and not (tmp_path / "sea.png").exists()
    assert (tmp_path / "fox.png").read_bytes() == images["fox.png"]


@pytest.mark.parametrize("uri,name", [
    (f"{BUCKET}/job/k.webp", "k.webp"), (f"{BUCKET}/job/k.JPG", "k.jpg"),
    (f"{BUCKET}/job/k.exe", "k.png"), (f"{BUCKET}/job/k.png/../../x.sh", "k.png"), (None, "k.png"),
])
def test_the_extension_is_one_we_store_or_png(uri, name):
    assert Entry(key="k", prompt="", state="succeeded", gcs_uri=uri).file_name == name
