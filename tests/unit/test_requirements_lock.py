"""The functions' dependencies: requirements.in names what the code imports, requirements.txt is
its hashed lock (pip-compile --generate-hashes), the deploy archive carries the lock, and the
virtualenv the tests run in has exactly the locked versions."""
from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.unit.test_terraform import resources

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ROOT / "functions"
# Direct requirements that no `import` names, each with its reason in requirements.in.
NOT_IMPORTED = {"click"}
LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def direct() -> dict[str, Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in (FUNCTIONS / "requirements.in").read_text().splitlines())
    return {canonicalize_name(r.name): r for r in map(Requirement, filter(None, lines))}


def lock() -> dict[str, dict]:
    """{name: {version, hashes, via_in}} from the compiled requirements.txt."""
    entries: dict[str, dict] = {}
    current = None
    for line in (FUNCTIONS / "requirements.txt").read_text().splitlines():
        if match := LOCK_LINE.match(line):
            current = entries[canonicalize_name(match[1])] = {"version": match[2], "hashes": 0, "via_in": False}
        elif current is not None and line.strip().startswith("--hash=sha256:"):
            current["hashes"] += 1
        elif current is not None and "-r requirements.in" in line:
            current["via_in"] = True
    return entries


def imported_distributions() -> set[str]:
    """The distributions whose modules functions/ imports unconditionally (an import guarded by
    `except ImportError` is optional)."""
    local = {p.stem for p in FUNCTIONS.iterdir()}
    optional: set[int] = set()
    names: set[str] = set()
    for path in FUNCTIONS.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(
                    isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in node.handlers):
                optional |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    owners = importlib.metadata.packages_distributions()
    found = set()
    for name in names:
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top in local or top == "__future__":
            continue
        if top == "google":  # a namespace shared by many distributions: google.cloud.storage -> google-cloud-storage
            parts = name.split(".")
            if len(parts) >= 2 and parts[1] != "cloud":
                found.add(canonicalize_name(f"google-{parts[1]}"))
            elif len(parts) >= 3:
                found.add(canonicalize_name(f"google-cloud-{parts[2].split('_')[0]}"))
            continue
        found |= {canonicalize_name(d) for d in owners[top]}
    return found


def test_requirements_in_names_what_the_code_imports():
    assert set(direct()) - NOT_IMPORTED == imported_distributions()


def test_every_locked_requirement_is_pinned_and_hashed():
    entries = lock()
    assert entries, "functions/requirements.txt has no pinned requirement"
    assert [name for name, entry in entries.items() if entry["hashes"] == 0] == []
    header = (FUNCTIONS / "requirements.txt").read_text()
    assert "pip-compile" in header and "--generate-hashes" in header


def test_the_lock_agrees_with_requirements_in():
    """Fails when requirements.in changed and the lock was not compiled again (make lock)."""
    entries, wanted = lock(), direct()
    missing = sorted(set(wanted) - set(entries))
    assert missing == [], "make lock"
    unmet = {name: entries[name]["version"] for name, req in wanted.items()
             if not req.specifier.contains(entries[name]["version"], prereleases=True)}
    assert unmet == {}, "make lock"
    stale = sorted(name for name, entry in entries.items() if entry["via_in"] and name not in wanted)
    assert stale == [], "make lock"


def test_the_test_virtualenv_has_exactly_the_locked_versions():
    # make venv installs the lock first with --require-hashes; a dev tool that moved one of its
    # versions would test something other than what deploys.
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    moved = {name: (entry["version"], installed.get(name)) for name, entry in lock().items()
             if installed.get(name) != entry["version"]}
    assert moved == {}


def test_the_deploy_archive_carries_the_lock_beside_main_py():
    [archive] = resources("data")["archive_file"].values()
    assert archive["source_dir"].endswith("/../../functions")
    excluded = " ".join(str(e) for e in archive.get("excludes", []))
    patterns = re.findall(r'"([^"]*\*[^"]*)"', excluded)
    assert patterns, "the archive's excludes could not be read"
    assert not any(fnmatch.fnmatch("requirements.txt", p) for p in patterns)
    assert (FUNCTIONS / "requirements.txt").exists() and (FUNCTIONS / "main.py").exists()
