"""A stand-in remote filesystem for tests: ``testfs://<path>`` stored under a local root.

Beam picks a filesystem by the URI's scheme among the subclasses of ``FileSystem``, so defining
this class registers ``testfs://``. Code that lists, reads and writes through
``apache_beam.io.filesystems`` works on it unchanged; code that opens local paths itself fails.
"""

from __future__ import annotations

import os

from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.localfilesystem import LocalFileSystem

SCHEME = "testfs"
PREFIX = f"{SCHEME}://"
ROOT_ENV = "RECSTACK_TEST_REMOTEFS_ROOT"  # where the files live (set by the test)


class RemoteTestFileSystem(LocalFileSystem):
    """``testfs://a/b`` <-> ``$RECSTACK_TEST_REMOTEFS_ROOT/a/b``; paths keep their scheme."""

    @classmethod
    def scheme(cls) -> str:
        return SCHEME

    @staticmethod
    def _local(path: str) -> str:
        if not path.startswith(PREFIX):
            return path
        return os.path.join(os.environ[ROOT_ENV], path[len(PREFIX):])

    @staticmethod
    def _remote(local: str) -> str:
        return PREFIX + os.path.relpath(local, os.environ[ROOT_ENV])

    def join(self, basepath: str, *paths: str) -> str:
        if not basepath.startswith(PREFIX):
            return super().join(basepath, *paths)
        return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

    def split(self, path: str) -> tuple[str, str]:
        if not path.startswith(PREFIX):
            return super().split(path)
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def _url_dirname(self, url_or_path: str) -> str:
        return self.split(url_or_path)[0]

    def _list(self, dir_or_prefix: str):
        local = self._local(dir_or_prefix)
        if not os.path.exists(local):
            return
        for dirpath, _, files in os.walk(local):
            for name in files:
                f = os.path.join(dirpath, name)
                yield FileMetadata(self._remote(f), os.path.getsize(f), os.path.getmtime(f))

    def mkdirs(self, path):
        return super().mkdirs(self._local(path))

    def create(self, path, *args, **kwargs):
        os.makedirs(os.path.dirname(self._local(path)), exist_ok=True)
        return super().create(self._local(path), *args, **kwargs)

    def open(self, path, *args, **kwargs):
        return super().open(self._local(path), *args, **kwargs)

    def copy(self, sources, destinations):
        return super().copy([self._local(p) for p in sources],
                            [self._local(p) for p in destinations])

    def rename(self, sources, destinations):
        for d in destinations:
            os.makedirs(os.path.dirname(self._local(d)), exist_ok=True)
        return super().rename([self._local(p) for p in sources],
                              [self._local(p) for p in destinations])

    def exists(self, path):
        return super().exists(self._local(path))

    def size(self, path):
        return super().size(self._local(path))

    def last_updated(self, path):
        return super().last_updated(self._local(path))

    def checksum(self, path):
        return super().checksum(self._local(path))

    def metadata(self, path):
        meta = super().metadata(self._local(path))
        return FileMetadata(path, meta.size_in_bytes, meta.last_updated_in_seconds)

    def delete(self, paths):
        return super().delete([self._local(p) for p in paths])
