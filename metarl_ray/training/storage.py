"""Where run directories live: a local path or a URI (``file://``, ``s3://``, ``gs://``, ...).

A job on a cluster runs its driver on some node whose disk the user may never see, so ``--output_dir``
(and Tune's ``storage_path``) may name shared storage by URI. :class:`StoragePath` is a small
``pathlib``-like value over a ``pyarrow.fs`` filesystem, so checkpoints, metrics, configs and logs are
written and read the same way everywhere.

Atomic writes on every filesystem: the bytes go to a temporary name next to the target and are then
moved onto it. On a local disk the file is fsynced first and the move is a ``rename``. On object stores
a move is a server-side copy, and an object becomes visible only when its copy completes, so a reader
sees the old object or the whole new one, never a part; a crash before the move leaves only a stray
temporary object (named ``.NAME.tmp``), which readers ignore.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from metarl_ray.config import URI_SCHEMES, uri_scheme

# The cloud schemes need the matching credentials on every node that writes.
SUPPORTED_SCHEMES = URI_SCHEMES


@dataclass(frozen=True, eq=False)
class StoragePath:
    filesystem: pafs.FileSystem
    path: str
    """The filesystem's own path: ``bucket/key`` for object stores, an absolute or relative local path."""
    scheme: str = ""
    """'' for a plain local path (shown as given), else the URI scheme it was given with."""
    query: str = ""
    """The URI's options (``?endpoint_override=host:9000&scheme=http`` for MinIO), kept for ``str``."""

    @classmethod
    def parse(cls, location: str | os.PathLike[str] | StoragePath) -> StoragePath:
        """A plain path or a URI. Opening an ``s3://`` or ``gs://`` URI may contact the service."""
        if isinstance(location, StoragePath):
            return location
        text = os.fspath(location)
        scheme = uri_scheme(text)
        if not scheme:
            return cls(pafs.LocalFileSystem(), text, "")
        if scheme not in SUPPORTED_SCHEMES:
            raise ValueError(
                f"{text}: unsupported URI scheme {scheme!r}; expected a path or one of {', '.join(SUPPORTED_SCHEMES)}"
            )
        filesystem, path = pafs.FileSystem.from_uri(text)
        return cls(filesystem, path.rstrip("/") or "/", scheme, urlparse(text).query)

    def __eq__(self, other: object) -> bool:
        """Same filesystem and path; a local one also equals the ``pathlib.Path`` of the same path."""
        if isinstance(other, StoragePath):
            return self.path == other.path and self.filesystem.equals(other.filesystem)
        if isinstance(other, os.PathLike) and self.local is not None:
            return self.local == Path(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.path)

    # -- naming ---------------------------------------------------------------------------------
    def __str__(self) -> str:
        if not self.scheme:
            return self.path
        return f"{self.scheme}://{self.path}" + (f"?{self.query}" if self.query else "")

    def __fspath__(self) -> str:
        """Only local paths are paths to the operating system."""
        if self.local is None:
            raise TypeError(f"{self} is not on the local filesystem")
        return str(self.local)

    def __truediv__(self, name: str) -> StoragePath:
        return StoragePath(self.filesystem, posixpath.join(self.path, name), self.scheme, self.query)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def parent(self) -> StoragePath:
        return StoragePath(self.filesystem, posixpath.dirname(self.path.rstrip("/")) or ".", self.scheme, self.query)

    @property
    def local(self) -> Path | None:
        """The ``pathlib.Path`` of a location on this machine's disk, else None."""
        return Path(self.path) if isinstance(self.filesystem, pafs.LocalFileSystem) else None

    def with_name(self, name: str) -> StoragePath:
        return self.parent / name

    def resolve(self) -> StoragePath:
        """Absolute for local paths (two spellings of one directory compare equal); URIs as they are."""
        local = self.local
        return (
            StoragePath(self.filesystem, str(local.resolve()), self.scheme, self.query) if local is not None else self
        )

    # -- queries --------------------------------------------------------------------------------
    def _type(self) -> pafs.FileType:
        return self.filesystem.get_file_info(self.path).type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def iterdir(self) -> list[StoragePath]:
        if not self.is_dir():
            return []
        infos = self.filesystem.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return [StoragePath(self.filesystem, info.path, self.scheme, self.query) for info in infos]

    def glob(self, pattern: str) -> list[StoragePath]:
        """Entries of this directory whose name matches ``pattern`` (one level, like Path.glob)."""
        return [entry for entry in self.iterdir() if fnmatch.fnmatchcase(entry.name, pattern)]

    # -- reading and writing --------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        with self.filesystem.open_input_stream(self.path) as stream:
            return stream.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def mkdir(self, exist_ok: bool = True) -> None:
        """Create the directory and its parents; with ``exist_ok=False`` an existing one raises
        FileExistsError (atomically on a local disk, where two runs may start at once)."""
        local = self.local
        if local is not None:
            local.mkdir(parents=True, exist_ok=exist_ok)
            return
        if not exist_ok and self.exists():
            raise FileExistsError(str(self))
        self.filesystem.create_dir(self.path, recursive=True)

    def write_bytes(self, data: bytes) -> None:
        """Write atomically (see the module docstring): readers see the old file or all of ``data``."""
        tmp = self.with_name(f".{self.name}.tmp")
        local = self.local
        if local is not None:
            try:
                with open(tmp.path, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp.path, local)
            except OSError:
                Path(tmp.path).unlink(missing_ok=True)  # a full disk must not keep the partial copy too
                raise
            _fsync_directory(local.parent)
            return
        with self.filesystem.open_output_stream(tmp.path) as stream:
            stream.write(data)
        self.filesystem.move(tmp.path, self.path)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
