"""Safe reading of ONNX external-data tensors.

We never hand a path from a model file to onnx's own loader: the resolved file must stay inside
the model's directory (no `..`, absolute paths, or symlinks/hardlinks leading out; onnx has had
path-traversal CVEs here), offset and length are checked against the file size before anything
is read, and the data is memory-mapped, so a huge declared length costs no memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from compiler.errors import ModelError


@dataclass(frozen=True)
class ExternalRef:
    tensor: str
    location: str
    offset: int
    length: int | None


def external_ref(t: onnx.TensorProto) -> ExternalRef | None:
    """The external-data reference of an initializer, or None if its data is inline."""
    if t.data_location != onnx.TensorProto.EXTERNAL:
        return None
    entries = {e.key: e.value for e in t.external_data}
    if "location" not in entries:
        raise ModelError(f"initializer {t.name}: external data without a 'location' entry")
    try:
        offset = int(entries.get("offset", 0))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError:
        raise ModelError(f"initializer {t.name}: external offset/length are not integers") from None
    if offset < 0 or (length is not None and length < 0):
        raise ModelError(f"initializer {t.name}: negative external offset or length")
    return ExternalRef(t.name, entries["location"], offset, length)


def resolve_location(base_dir: Path, ref: ExternalRef) -> Path:
    """The data file's real path, which must lie inside `base_dir`."""
    loc = ref.location
    where = f"initializer {ref.tensor}: external data location {loc!r}"
    if not loc or os.path.isabs(loc) or Path(loc).drive:
        raise ModelError(f"{where} must be a relative path inside the model's directory")
    if ".." in Path(loc).parts:
        raise ModelError(f"{where} contains '..'; external data must stay in the model's directory")
    root = base_dir.resolve()
    path = (root / loc).resolve()
    if not path.is_relative_to(root):
        raise ModelError(f"{where} leads outside the model's directory (through a symlink)")
    return path


def data_available(base_dir: Path, ref: ExternalRef) -> bool:
    return resolve_location(base_dir, ref).is_file()


def read_external(base_dir: Path, ref: ExternalRef, dtype: np.dtype, shape: tuple[int, ...]):
    """Memory-map one external tensor after checking its bounds; returns a read-only array."""
    path = resolve_location(base_dir, ref)
    where = f"initializer {ref.tensor} ({ref.location})"
    if not path.is_file():
        raise ModelError(f"{where}: data file not found; use --shapes-only to compile without it")
    st = path.stat()
    if st.st_nlink > 1:
        raise ModelError(f"{where}: the data file has several hard links; copy it instead")
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    length = need if ref.length is None else ref.length
    if length != need:
        raise ModelError(f"{where}: declares {length} bytes but shape {list(shape)} needs {need}")
    if ref.offset + length > st.st_size:
        raise ModelError(
            f"{where}: bytes {ref.offset}..{ref.offset + length} lie past the end of the "
            f"{st.st_size}-byte file"
        )
    if need == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=ref.offset, shape=shape)
