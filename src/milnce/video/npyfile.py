"""The one reader of flat ``.npy`` feature files (the recipes' ``<video_id>.npy``, ``milnce pack``'s inputs).

A ``.npy`` header names a shape and dtype; ``np.load`` allocates what it says before reading a
byte of data, so a 200-byte file claiming ``(100000000000, 512)`` asks for 100 GB. Here the
header is read first and checked against the file's size (the one handle's ``fstat``): the
data must be exactly ``shape x itemsize`` bytes after the header, or the file is refused in one
line (``NpyFileError``) before anything is allocated. Object dtypes (pickles) are refused.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from ..errors import MilnceError

__all__ = ["NpyFileError", "NpyHeader", "npy_header", "read_npy", "read_header_fields"]


class NpyFileError(MilnceError, ValueError):
    """A ``.npy`` file that is not a whole, plain array (bad header, wrong size, object dtype)."""


@dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` header says, checked against the file: ``offset`` = where the data starts,
    ``size`` = the file's size in bytes (``offset + nbytes``)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int
    size: int

    @property
    def nbytes(self) -> int:
        return self.size - self.offset


def read_header_fields(f: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of the ``.npy`` header at ``f``'s position (any version;
    ``f`` left at the first data byte); ``ValueError``/``EOFError`` for a bad header. Also reads the
    members of an ``.npz`` (``video.result.check_structure``)."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        return fmt.read_array_header_1_0(f)
    if version in ((2, 0), (3, 0)):
        return fmt.read_array_header_2_0(f)
    raise ValueError(f"unsupported .npy version {version}")


def _read_header(f: BinaryIO, path: str) -> NpyHeader:
    try:
        shape, fortran, dtype = read_header_fields(f)
    except (ValueError, EOFError, OSError) as exc:
        raise NpyFileError(f"{path}: not a readable .npy file ({' '.join(str(exc).split())[:200]})") from None
    if dtype.hasobject:
        raise NpyFileError(f"{path}: holds Python objects (a pickle), not numbers")
    offset, size = f.tell(), os.fstat(f.fileno()).st_size
    want = offset + math.prod(shape) * dtype.itemsize
    if size != want:
        raise NpyFileError(f"{path}: its header says shape {tuple(shape)} {dtype} ({want - offset:,} bytes of data) "
                           f"but the file holds {max(size - offset, 0):,} (truncated or damaged)")
    return NpyHeader(tuple(int(n) for n in shape), dtype, bool(fortran), offset, size)


def _open(path: str) -> BinaryIO:
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the callers' with
    except OSError as exc:
        raise NpyFileError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def npy_header(path: str) -> NpyHeader:
    """The header of ``path``, checked against the file's size (reads only the header)."""
    with _open(path) as f:
        return _read_header(f, path)


def read_npy(path: str) -> tuple[np.ndarray, NpyHeader, str]:
    """``(array, header, sha256 hex of the whole file)``; ``NpyFileError`` (one line naming the
    file) for anything but a whole, plain array. Nothing is allocated before the header's
    shape has been checked against the file's size."""
    with _open(path) as f:
        head = _read_header(f, path)
        f.seek(0)
        try:
            data = f.read(head.size + 1)
        except OSError as exc:
            raise NpyFileError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if len(data) != head.size:
        raise NpyFileError(f"{path}: changed while it was read")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError) as exc:
        raise NpyFileError(f"{path}: not a readable .npy file ({' '.join(str(exc).split())[:200]})") from None
    return arr, head, hashlib.sha256(data).hexdigest()
