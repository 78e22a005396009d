"""Turning uploaded bytes into model inputs, refusing what could harm the server.

Nothing here trusts a client: the kind of a file is read from its first bytes, never its
name; images are measured before a pixel is decoded; zip members are checked for paths that
leave the archive and for their unpacked size; and no client-given name reaches the file
system (a recording that must be read from disk is written under names chosen here, in a
temporary folder made here).
"""

from __future__ import annotations

import io
import re
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np

from medlite.data.arrays import ZIP_ERRORS
from medlite.data.io import decode_image
from medlite.errors import DataError

#: First bytes of each accepted image format.
IMAGE_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "png",
    b"\xff\xd8\xff": "jpeg",
    b"BM": "bmp",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
}
#: First bytes of TIFF and BigTIFF, the containers of SVS, NDPI and pyramidal TIFF slides.
SLIDE_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
ZIP_SIGNATURE = b"PK\x03\x04"
NPY_SIGNATURE = b"\x93NUMPY"
PICKLE_PROTOCOL_2_PLUS = b"\x80"


class UploadTooLarge(DataError):
    """An upload or a zip member is larger than the server accepts (HTTP 413)."""


@dataclass(frozen=True)
class UploadLimits:
    """What one request may send.

    Attributes:
        max_bytes: size of the request body (and of each file in it).
        max_pixels: width x height of one image.
        max_unzipped_bytes: total unpacked size of a zip archive's members.
        max_zip_members: number of members of a zip archive.
    """

    max_bytes: int = 50 * 2 ** 20
    max_pixels: int = 40_000_000
    max_unzipped_bytes: int = 200 * 2 ** 20
    max_zip_members: int = 16


def sniff(data: bytes) -> str:
    """The kind of a file from its content: ``png``, ``jpeg``, ``bmp``, ``tiff``, ``zip``,
    ``npy``, ``pickle``, ``text`` (UTF-8 without NUL bytes) or ``unknown``."""
    for signature, kind in IMAGE_SIGNATURES.items():
        if data.startswith(signature):
            return kind
    if data.startswith(ZIP_SIGNATURE):
        return "zip"
    if data.startswith(NPY_SIGNATURE):
        return "npy"
    if data.startswith(PICKLE_PROTOCOL_2_PLUS) and len(data) > 2:
        return "pickle"
    head = data[:65536]
    if head and b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "text"
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 4:  # not just a character cut at the end of the head
                return "unknown"
            return "text"
    return "unknown"


def image_from_upload(data: bytes, field: str, limits: UploadLimits) -> np.ndarray:
    """uint8 ``(H, W, 3)`` RGB of an uploaded image (PNG, JPEG, BMP, TIFF by content).

    Raises:
        DataError: empty, not an image, or more than ``limits.max_pixels`` pixels; the message
            names ``field``.
    """
    if not data:
        raise DataError(f"{field}: the file is empty")
    kind = sniff(data)
    if kind not in IMAGE_SIGNATURES.values():
        raise DataError(f"{field}: not an image (the content is {kind}; send PNG, JPEG, BMP "
                        "or TIFF)")
    return decode_image(data, field, max_pixels=limits.max_pixels)


def is_slide(head: bytes) -> bool:
    """Whether a file's first bytes are a TIFF or BigTIFF (every slide format read from a
    single upload is one)."""
    return head.startswith(SLIDE_SIGNATURES)


@contextmanager
def slide_from_upload(stream: BinaryIO, field: str, limits: UploadLimits,
                      chunk_bytes: int = 1 << 20) -> Iterator[Path]:
    """An uploaded slide on disk for the time of a ``with`` block (OpenSlide reads files,
    not bytes): copied from ``stream`` in chunks, so a slide of any size never sits in
    memory, into a temporary folder and a file name chosen here.

    Raises:
        DataError: empty, or not a TIFF/BigTIFF; UploadTooLarge: over ``limits.max_bytes``.
    """
    head = stream.read(8)
    if not head:
        raise DataError(f"{field}: the file is empty")
    if not is_slide(head):
        raise DataError(f"{field}: not a slide (the content is {sniff(head)}; send an SVS, "
                        "NDPI or pyramidal TIFF file)")
    with tempfile.TemporaryDirectory(prefix="medlite-slide-") as folder:
        path = Path(folder) / "slide.tif"
        size = len(head)
        with open(path, "wb") as copy:
            copy.write(head)
            while chunk := stream.read(chunk_bytes):
                size += len(chunk)
                if size > limits.max_bytes:
                    raise UploadTooLarge(f"{field}: larger than "
                                         f"{limits.max_bytes // 2 ** 20} MiB")
                copy.write(chunk)
        yield path


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


_MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def unzip(data: bytes, field: str, limits: UploadLimits) -> dict[str, bytes]:
    """The members of an uploaded zip archive, in memory, by their (plain) file names.

    Folders inside the archive are allowed (``record/x.hea``); a member whose path is
    absolute, climbs with ``..``, or whose name is not a plain file name is refused, as is an
    archive with too many members or too many unpacked bytes (checked while reading, so a
    zip bomb is stopped before it is unpacked).

    Raises:
        DataError: the archive or a member is unsafe or unreadable; UploadTooLarge: too big.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in archive.infolist() if not i.is_dir()]
    except ZIP_ERRORS as exc:
        raise DataError(f"{field}: not a readable zip archive ({_one_line(exc)})") from exc
    if len(infos) > limits.max_zip_members:
        raise DataError(f"{field}: {len(infos)} files in the archive, at most "
                        f"{limits.max_zip_members} allowed")
    members: dict[str, bytes] = {}
    total = 0
    for info in infos:
        path = PurePosixPath(info.filename.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or not _MEMBER_NAME.match(path.name):
            raise DataError(f"{field}: archive member {info.filename!r} is not a plain "
                            "relative file name")
        if path.name in members:
            raise DataError(f"{field}: two archive members are named {path.name!r}")
        chunks = []
        try:
            with archive.open(info) as member:
                while chunk := member.read(1 << 16):
                    total += len(chunk)
                    if total > limits.max_unzipped_bytes:
                        raise UploadTooLarge(
                            f"{field}: the archive unpacks to more than "
                            f"{limits.max_unzipped_bytes // 2 ** 20} MiB")
                    chunks.append(chunk)
        except ZIP_ERRORS as exc:
            raise DataError(f"{field}: cannot unpack {info.filename!r} ({_one_line(exc)})"
                            ) from exc
        members[path.name] = b"".join(chunks)
    return members


_WFDB_RECORD = "record"


def _wfdb_files(files: dict[str, bytes], field: str) -> dict[str, bytes]:
    """A WFDB header and its signal files renamed to names chosen here.

    The header names its record and signal files; both are rewritten (``record``,
    ``record_<n>.dat``) so that no client-given name is written to disk.
    """
    headers = [name for name in files if name.lower().endswith(".hea")]
    if len(headers) != 1:
        raise DataError(f"{field}: a WFDB upload needs exactly one .hea header and its "
                        f"signal file(s); got {', '.join(sorted(files)) or 'nothing'}")
    try:
        lines = files[headers[0]].decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{field}: {headers[0]} is not a text header") from exc
    content = [i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")]
    if not content:
        raise DataError(f"{field}: {headers[0]} is empty")
    record_line = lines[content[0]].split()
    record_line[0] = _WFDB_RECORD
    lines[content[0]] = " ".join(record_line)
    renamed: dict[str, str] = {}
    out: dict[str, bytes] = {}
    for index in content[1:]:
        parts = lines[index].split()
        if not parts:
            continue
        signal = parts[0]
        if signal not in files:
            raise DataError(f"{field}: {headers[0]} names signal file {signal!r}, which was "
                            "not uploaded")
        if signal not in renamed:
            renamed[signal] = f"{_WFDB_RECORD}_{len(renamed)}.dat"
            out[renamed[signal]] = files[signal]
        parts[0] = renamed[signal]
        lines[index] = " ".join(parts)
    out[f"{_WFDB_RECORD}.hea"] = ("\n".join(lines) + "\n").encode("utf-8")
    return out


@dataclass(frozen=True)
class RecordingUpload:
    """Where an uploaded recording was written (a temporary folder) and how to read it."""

    path: Path
    format: str


#: Content kind of a single-file recording -> (recording format, file written).
_SINGLE_FILE = {"text": ("csv", "recording.csv"), "npy": ("npy", "recording.npy"),
                "pickle": ("wesad", "recording.pkl"), "zip": ("npz", "recording.npz")}


def _is_wfdb(files: dict[str, bytes]) -> bool:
    return any(name.lower().endswith(".hea") for name in files)


@contextmanager
def recording_from_upload(files: dict[str, bytes], field: str, limits: UploadLimits
                          ) -> Iterator[RecordingUpload]:
    """An uploaded ECG recording on disk for the time of a ``with`` block.

    ``files`` maps each uploaded file's (client) name to its bytes: one CSV, NumPy
    (``.npy``/``.npz``) or WESAD pickle; a WFDB header with its signal file(s); or a zip of a
    WFDB record. Kinds are told by content. The folder and the names in it are made here
    and removed afterwards.
    """
    if not files:
        raise DataError(f"{field}: no file uploaded")
    kind = sniff(next(iter(files.values()))) if len(files) == 1 else None
    if kind == "zip":
        members = unzip(next(iter(files.values())), field, limits)
        if _is_wfdb(members):
            files, kind = members, None
        elif not all(n.endswith(".npy") for n in members):
            raise DataError(f"{field}: the archive holds neither a WFDB record (.hea) "
                            "nor NumPy arrays (.npz)")
    if len(files) > 1 or _is_wfdb(files):
        written, fmt, main = _wfdb_files(files, field), "wfdb", f"{_WFDB_RECORD}.hea"
    elif kind in _SINGLE_FILE:
        fmt, main = _SINGLE_FILE[kind]
        written = {main: next(iter(files.values()))}
    else:
        raise DataError(f"{field}: not a recording (the content is {kind}; send a CSV, "
                        ".npy/.npz, a WESAD .pkl, or a WFDB .hea with its .dat)")
    with tempfile.TemporaryDirectory(prefix="medlite-upload-") as folder:
        for name, data in written.items():
            (Path(folder) / name).write_bytes(data)
        yield RecordingUpload(Path(folder) / main, fmt)
