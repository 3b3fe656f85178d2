"""Safe reading of ONNX external-data tensors.

We never hand a path from a model file to onnx's own loader (onnx has had three path-traversal
CVEs there: CVE-2022-25882, CVE-2024-27318, CVE-2026-27489). Our rule, checked when the model is
opened (compiler/frontend/validate.py) and again before each read:

- the location is a relative path without `..`, and resolves (symlinks followed) to a file
  inside the model's directory;
- that file is a regular file with exactly one hard link (a second link could make a file from
  anywhere on the same filesystem appear inside the directory, and cannot be told apart);
- offset and length are non-negative integers, the length matches the tensor's shape, and
  offset + length lies within the file.

The data is then memory-mapped read-only, so a huge declared length costs no memory.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from compiler.errors import ModelError

EXTERNAL_KEYS = frozenset({"location", "offset", "length", "checksum", "basepath"})


@dataclass(frozen=True)
class ExternalRef:
    tensor: str
    location: str
    offset: int
    length: int | None


def external_ref(t: onnx.TensorProto, where: str = "") -> ExternalRef | None:
    """The external-data reference of a tensor, or None if its data is inline."""
    if t.data_location != onnx.TensorProto.EXTERNAL:
        return None
    where = where or f"initializer {t.name}"
    entries = {e.key: e.value for e in t.external_data}
    unknown = sorted(set(entries) - EXTERNAL_KEYS)
    if unknown:
        raise ModelError(f"{where}: unknown external data key(s) {', '.join(map(repr, unknown))}"
                         f" (known: {', '.join(sorted(EXTERNAL_KEYS))})")
    if not entries.get("location"):
        raise ModelError(f"{where}: external data without a 'location' entry")
    try:
        offset = int(entries.get("offset", 0))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError:
        raise ModelError(f"{where}: external offset/length are not integers") from None
    if offset < 0 or (length is not None and length < 0):
        raise ModelError(f"{where}: negative external offset or length")
    return ExternalRef(t.name, entries["location"], offset, length)


def resolve_location(base_dir: Path, ref: ExternalRef) -> Path:
    """The data file's real path, which must lie inside `base_dir`."""
    loc = ref.location
    where = f"initializer {ref.tensor}: external data location {loc!r}"
    if not loc or "\0" in loc or os.path.isabs(loc) or Path(loc).drive:
        raise ModelError(f"{where} must be a relative path inside the model's directory")
    if ".." in Path(loc).parts or ".." in Path(loc.replace("\\", "/")).parts:
        raise ModelError(f"{where} contains '..'; external data must stay in the model's directory")
    root = base_dir.resolve()
    path = (root / loc).resolve()
    if path == root:
        raise ModelError(f"{where} names the model's directory, not a data file in it")
    if not path.is_relative_to(root):
        raise ModelError(f"{where} leads outside the model's directory (through a symlink)")
    return path


def check_external(base_dir: Path, ref: ExternalRef, nbytes: int) -> Path | None:
    """The checked data file of `ref` (None when it does not exist: shapes-only); refuses
    anything outside base_dir, hard-linked or special files, and bytes past the end."""
    path = resolve_location(base_dir, ref)
    where = f"initializer {ref.tensor} ({ref.location})"
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelError(f"{where}: cannot stat the data file ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelError(f"{where}: the data location is not a regular file")
    if st.st_nlink > 1:
        raise ModelError(f"{where}: the data file has {st.st_nlink} hard links; wafer reads only "
                         "files with one link (a hard link can lead out of the model's "
                         "directory): copy the file instead")
    length = nbytes if ref.length is None else ref.length
    if length != nbytes:
        raise ModelError(f"{where}: declares {length:,} bytes but its shape needs {nbytes:,}")
    if ref.offset + length > st.st_size:
        raise ModelError(
            f"{where}: bytes {ref.offset:,}..{ref.offset + length:,} lie past the end of the "
            f"{st.st_size:,}-byte file; the file is truncated or the model is corrupt"
        )
    return path


def data_available(base_dir: Path, ref: ExternalRef) -> bool:
    return resolve_location(base_dir, ref).is_file()


def read_external(base_dir: Path, ref: ExternalRef, dtype: np.dtype, shape: tuple[int, ...]):
    """Memory-map one external tensor after checking it again; returns a read-only array."""
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    path = check_external(base_dir, ref, need)
    if path is None:
        raise ModelError(f"initializer {ref.tensor} ({ref.location}): data file not found; use "
                         "--shapes-only to compile without it")
    if need == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=ref.offset, shape=shape)
