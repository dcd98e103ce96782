"""Local paths and cloud-storage URLs (`gs://bucket/...`) behind one small API.

Workdirs, `config.data.data_dir` and prediction outputs may live in a Google
Cloud Storage bucket, which every host of a TPU slice or GPU cluster sees.
`resolve` turns what the user gave into a path object: a `pathlib.Path` for a
local path (unchanged behaviour) or an `etils.epath.Path` for a URL, the
path type orbax and TFDS already use, which reads and writes buckets through
TensorFlow's gfile (or fsspec). Both support `/`, `mkdir`, `exists`,
`read_text`, `write_text`, `iterdir` and `glob`.

`pathlib.Path("gs://bucket/run")` silently becomes the local relative path
`gs:/bucket/run`; `resolve` recognises that mangled form and restores the URL,
so a workdir that went through `pathlib` on the way still lands in the bucket.
A URL scheme jaxseg cannot write (`s3://`, `hdfs://`, `http://`, ...) is
refused with one line.

Writes that must never leave a half-written file (`write_text_atomic`,
`replace_atomically` for writers that need a file name, such as nibabel and
matplotlib) use a unique temporary name beside the target and `os.replace`
locally; an object store writes an object in one piece, so a remote write goes
straight to its name. `ensure_dir` probes that a directory can be written, and
`exclusive_lock` serialises processes that prepare the same local data.

This module is the one place for these file-system primitives.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import re
import tempfile
import uuid
from typing import Callable, Iterator, Union

from etils import epath

from jaxseg.errors import WorkdirError

REMOTE_SCHEMES = ("gs",)  # Written through etils.epath (TensorFlow gfile / fsspec).
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$")
_MANGLED = re.compile(r"^(?P<scheme>gs):/(?P<rest>[^/].*)$")  # pathlib.Path("gs://b/r") -> "gs:/b/r".

Path = Union[pathlib.Path, epath.Path]


def resolve(path: str | os.PathLike, what: str = "path") -> Path:
  """A `pathlib.Path` (local, `~` expanded) or an `epath.Path` (a `gs://` URL) for `path`.

  Args:
    path: a local path, a URL, or a path object (a URL mangled by pathlib is restored).
    what: what the path is, for the error message (e.g. 'workdir', 'config.data.data_dir').

  Raises:
    WorkdirError: a URL scheme other than gs://, or an empty bucket name.
  """
  if isinstance(path, epath.Path) and not isinstance(path, pathlib.PurePath):
    return path
  text = os.fspath(path)
  match = _URL.match(text) or _MANGLED.match(text)
  if match is None:
    return pathlib.Path(text).expanduser()
  scheme = match.group("scheme").lower()
  if scheme == "file":
    return pathlib.Path("/" + match.group("rest").lstrip("/"))
  if scheme not in REMOTE_SCHEMES:
    raise WorkdirError(
      f"{what} {text}: jaxseg cannot read or write {scheme}:// paths; use a local path or "
      + " / ".join(f"{s}://bucket/..." for s in REMOTE_SCHEMES)
    )
  rest = match.group("rest")
  if not rest.split("/", 1)[0]:
    raise WorkdirError(f"{what} {text}: no bucket name after {scheme}://")
  return epath.Path(f"{scheme}://{rest}")


def is_remote(path: str | os.PathLike) -> bool:
  """True for a cloud-storage URL (after `resolve`)."""
  return not isinstance(resolve(path), pathlib.Path)


def ensure_dir(path: str | os.PathLike, what: str = "workdir") -> Path:
  """Creates directory `path` (local or in a bucket) and checks that a file can be written in it.

  Raises:
    WorkdirError: the directory cannot be created or written (names it and why).
  """
  directory = resolve(path, what)
  probe = directory / f".write_test_{os.getpid()}"
  try:
    directory.mkdir(parents=True, exist_ok=True)
    probe.write_text("ok")
    probe.unlink()
  except Exception as e:  # OSError locally; gfile/fsspec raise their own types for buckets.
    reason = getattr(e, "strerror", None) or (str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
    raise WorkdirError(f"{what} {directory} cannot be written: {reason}") from e
  return directory


def write_text_atomic(path: Path, text: str) -> None:
  """Writes `text` to `path` so that readers see the old or the new content, never a part."""
  write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
  """Writes `data` to `path` atomically: a local temporary file renamed into place, or one object upload."""
  if isinstance(path, pathlib.Path):
    replace_atomically(path, lambda tmp: tmp.write_bytes(data))
  else:
    path.write_bytes(data)


def replace_atomically(path: pathlib.Path, write: Callable[[pathlib.Path], None], suffix: str = "") -> None:
  """Runs `write(tmp)` on a unique temporary name beside local `path` and renames the result into place.

  `suffix` ends the temporary name, for writers that choose the format by extension (`.nii.gz`, `.png`).
  Readers see the old file or the new one, never a part; a failed write leaves no temporary file behind.
  """
  tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp{suffix}")
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def exclusive_lock(path: pathlib.Path) -> Iterator[None]:
  """Holds an exclusive advisory lock (`fcntl.flock`) on local file `path`, created if missing."""
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def write_via_local(path: Path, write: Callable[[pathlib.Path], None]) -> None:
  """Runs `write(local_path)` for a writer that needs a local file (nibabel); uploads it when `path` is remote."""
  if isinstance(path, pathlib.Path):
    write(path)
    return
  with tempfile.TemporaryDirectory(prefix="jaxseg-upload-") as tmp:
    local = pathlib.Path(tmp) / path.name
    write(local)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(local.read_bytes())


def local_cache_dir() -> pathlib.Path:
  """A local directory for files that must be on a local disk (raw NIfTI a library writes itself)."""
  path = pathlib.Path(os.environ.get("JAXSEG_LOCAL_CACHE") or "~/.cache/jaxseg/local").expanduser()
  path.mkdir(parents=True, exist_ok=True)
  return path
