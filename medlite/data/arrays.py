"""NumPy ``.npy`` and ``.npz`` files from users, read without trusting their headers.

``np.load`` believes the shape a header declares: a 100-byte file claiming 10**12 elements
makes it allocate terabytes, and a broken header or zip container raises exceptions of a
dozen kinds. These readers check every declared size against the bytes that are actually
there (and, for ``.npz``, the unpacked total against :data:`MAX_NPZ_UNPACKED_BYTES`) before
allocating, never unpickle, and turn every failure into a one-line
:class:`~medlite.errors.DataError` naming the file (and the archive member).
"""

from __future__ import annotations

import io
import math
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from medlite.errors import DataError

#: Largest total a ``.npz`` archive may unpack to (1 GiB: 37 hours of 1 kHz float64 ECG).
MAX_NPZ_UNPACKED_BYTES = 1 << 30

#: What :mod:`zipfile` raises on a damaged or hostile archive, besides its BadZipFile:
#: corrupt deflate streams (zlib.error), cut streams (EOFError), bad offsets (ValueError),
#: encrypted members (RuntimeError), unknown methods and versions (NotImplementedError), a
#: member with an empty name (IndexError, from ZipInfo.is_dir).
ZIP_ERRORS: tuple[type[Exception], ...] = (
    zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError,
    NotImplementedError, IndexError, struct.error, OverflowError,
)

_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def npy_from_bytes(data: bytes | bytearray, where: str) -> np.ndarray:
    """The array stored in ``.npy`` bytes; writable when ``data`` is a bytearray.

    Raises:
        DataError: not ``.npy`` (version 1 or 2), Python objects, or a header declaring more
            (or fewer) bytes than follow it; the message starts with ``where``.
    """
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version not in _HEADER_READERS:
            raise ValueError(f"format version {version[0]}.{version[1]} is not supported")
        shape, fortran_order, dtype = _HEADER_READERS[version](stream)
    except Exception as error:  # noqa: BLE001 - numpy parses the header with ast, tokenize
        # and dtype descriptors, which raise many kinds of errors on hostile text
        raise DataError(f"{where}: not a readable .npy array ({_one_line(error)})") from None
    if dtype.hasobject:
        raise DataError(f"{where}: the array holds Python objects (a pickle), not numbers")
    declared = math.prod(shape) * dtype.itemsize
    present = len(data) - stream.tell()
    if declared != present:
        raise DataError(f"{where}: the header declares a {dtype} array of shape {shape} "
                        f"({declared:,} bytes) but {present:,} bytes follow it")
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=stream.tell())
    return array.reshape(shape, order="F" if fortran_order else "C")


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """A ``.npy`` file's array (writable; memory: the file's size), checked as
    :func:`npy_from_bytes` does.

    Raises:
        DataError: missing, unreadable or inconsistent file; the message names it.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = bytearray(os.fstat(handle.fileno()).st_size)
            handle.readinto(data)
    except OSError as error:
        raise DataError(f"{path}: not a readable .npy file ({_one_line(error)})") from None
    return npy_from_bytes(data, str(path))


def load_npz(path: str | os.PathLike, max_unpacked_bytes: int = MAX_NPZ_UNPACKED_BYTES
             ) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` file, by name (the member's name without ``.npy``).

    The members' declared sizes are summed before anything is unpacked, and each member's
    header is checked against its size, so neither a zip bomb nor a lying header allocates
    more than ``max_unpacked_bytes``.

    Raises:
        DataError: not a readable archive, a member that is not ``.npy``, too large when
            unpacked, or an inconsistent member; the message names the file (and member).
    """
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            total = sum(info.file_size for info in members)
            if total > max_unpacked_bytes:
                raise DataError(f"{path}: unpacks to {total:,} bytes, more than the "
                                f"{max_unpacked_bytes:,} allowed")
            for info in members:
                where = f"{path} member {info.filename!r}"
                if not info.filename.endswith(".npy"):
                    raise DataError(f"{where}: not a .npy array")
                with archive.open(info) as member:
                    data = bytearray(member.read())
                arrays[info.filename[:-4]] = npy_from_bytes(data, where)
    except ZIP_ERRORS as error:
        raise DataError(f"{path}: not a readable .npz archive ({_one_line(error)})") from None
    return arrays
