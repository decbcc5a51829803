"""Read an uploaded study: a .zip of the study folder, or its study.yaml alone.

Pure Python, like `studies.spec`: the upload becomes a dict of files (path -> bytes), read with the
same rules as a folder on disk (hidden files and `__pycache__/` left out), so the same study gives the
same sha256 whether it was loaded from the shell or uploaded. A zip is never extracted to disk: no
entry can write outside anything, and every problem of the archive is reported, one per entry.
"""
from __future__ import annotations

import io
import posixpath
import re
import stat
import zipfile

from .spec import (
    MAX_STUDY_BYTES,
    MAX_STUDY_FILES,
    STUDY_FILE,
    SpecError,
    StudyFile,
    StudyFileInvalid,
    canonical_hash,
    study_text_parse,
    yaml_caps_check,
)

# The limits are those of a folder on disk (studies.spec, docs/study-file.md "Limits on study files").
MAX_UPLOAD_BYTES = MAX_STUDY_BYTES  # the upload itself, and the sum of the unpacked files
MAX_FILES = MAX_STUDY_FILES
YAML_NAMES = (".yaml", ".yml")
_SKIPPED_DIRS = ("__pycache__", "__MACOSX")


def upload_files(*, filename: str, content: bytes) -> tuple[dict[str, bytes], bool]:
    """Return (files by POSIX path, whether study.yaml came alone) from an upload; raise StudyFileInvalid.

    The study.yaml returned has passed `yaml_caps_check`, so whatever reads it next (the slug's peek, the
    validation) does bounded work.
    """
    if len(content) > MAX_UPLOAD_BYTES:
        raise StudyFileInvalid([_error(f"the upload is {_mb(len(content))}; the limit is {_mb(MAX_UPLOAD_BYTES)}",
                                       file=filename)])
    if filename.lower().endswith(YAML_NAMES):
        files, alone = {STUDY_FILE: content}, True
    elif not zipfile.is_zipfile(io.BytesIO(content)):
        raise StudyFileInvalid([_error("upload a .zip of the study folder, or its study.yaml", file=filename)])
    else:
        files, alone = _zip_files(content, filename), False
    if STUDY_FILE in files:
        try:
            text = files[STUDY_FILE].decode("utf-8")
        except UnicodeDecodeError:
            pass  # reported by study_files_read, with the reason
        else:
            yaml_caps_check(text)
    return files, alone


def study_files_read(files: dict[str, bytes], *, source: str) -> StudyFile:
    """Read a study from a dict of files (study.yaml and its assets); raise StudyFileInvalid with every error."""
    if STUDY_FILE not in files:
        raise StudyFileInvalid([SpecError("", f"{STUDY_FILE} not found at the top of the upload")])
    try:
        text = files[STUDY_FILE].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StudyFileInvalid([SpecError("", f"is not utf-8 text ({exc.reason})")]) from None
    assets = dict(sorted((path, data) for path, data in files.items() if path != STUDY_FILE))
    spec = study_text_parse(text, assets)
    return StudyFile(spec=spec, assets=assets, sha256=canonical_hash(spec, assets), source=source)


def _zip_files(content: bytes, filename: str) -> dict[str, bytes]:
    errors: list[SpecError] = []
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
        entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:
        raise StudyFileInvalid([_error(f"not a readable zip file ({exc})", file=filename)]) from None
    if len(entries) > MAX_FILES:
        raise StudyFileInvalid([_error(f"the zip holds {len(entries)} entries; the limit is {MAX_FILES}", file=filename)])
    declared = sum(e.file_size for e in entries)
    if declared > MAX_UPLOAD_BYTES:
        raise StudyFileInvalid([_error(f"the files unpack to {_mb(declared)}; the limit is {_mb(MAX_UPLOAD_BYTES)}",
                                       file=filename)])
    kept = []
    for entry in entries:
        name = entry.filename
        mode = entry.external_attr >> 16
        if stat.S_ISLNK(mode):
            errors.append(_error("is a symbolic link; put the file itself in the zip", file=name))
        elif entry.flag_bits & 0x1:
            errors.append(_error("is encrypted; upload a zip without a password", file=name))
        elif _unsafe(name):
            errors.append(_error("its path leaves the study folder (absolute, '..' or a drive letter)", file=name))
        elif not entry.is_dir():
            kept.append(entry)
    if errors:
        raise StudyFileInvalid(errors)
    prefix = _common_folder([e.filename for e in kept])
    files: dict[str, bytes] = {}
    total = 0
    for entry in kept:
        path = posixpath.normpath(entry.filename.replace("\\", "/"))
        if _hidden(path):
            continue
        path = path[len(prefix):] if path.startswith(prefix) else path
        if path in files:
            errors.append(_error("is in the zip twice", file=entry.filename))
            continue
        try:
            with archive.open(entry) as member:  # reads at most the declared size, and checks the CRC
                data = member.read(MAX_UPLOAD_BYTES - total + 1)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError) as exc:
            errors.append(_error(f"cannot be read ({exc})", file=entry.filename))
            continue
        total += len(data)
        if total > MAX_UPLOAD_BYTES:
            raise StudyFileInvalid([_error(f"the files unpack to more than {_mb(MAX_UPLOAD_BYTES)}", file=filename)])
        files[path] = data
    if errors:
        raise StudyFileInvalid(errors)
    return files


def _unsafe(name: str) -> bool:
    name = name.replace("\\", "/")
    if not name or name.startswith("/") or re.match(r"^[A-Za-z]:", name) or "\x00" in name:
        return True
    return ".." in name.split("/")


def _common_folder(names: list[str]) -> str:
    """Return 'folder/' when every entry sits in one top folder and study.yaml is not at the top."""
    normal = [posixpath.normpath(n.replace("\\", "/")) for n in names]
    if STUDY_FILE in normal:
        return ""
    tops = {n.split("/", 1)[0] for n in normal if "/" in n and not _hidden(n)}
    if len(tops) == 1 and all("/" in n or _hidden(n) for n in normal):
        return tops.pop() + "/"
    return ""


def _hidden(path: str) -> bool:
    """The files a folder on disk leaves out too (studies.spec._assets_read)."""
    parts = path.split("/")
    return any(p.startswith(".") for p in parts) or any(p in _SKIPPED_DIRS for p in parts[:-1])


def _error(message: str, *, file: str) -> SpecError:
    return SpecError("", message, file=file or "upload", line=None)


def _mb(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"
