"""Structural checks of an ONNX model before anything else reads it.

A model file is parsed as protobuf here (never with onnx.load, which would follow external-data
paths), then checked as a whole: IR version and opset within what we support, a non-empty graph
whose values are each defined once, no dangling inputs, no cycles, graph inputs that are tensors
of known element type with no zero or negative dims, every tensor's data consistent with its
shape, and every external-data reference (in initializers, node attributes, subgraphs and
functions) inside the model's directory and within its file. Each problem is one ModelError
naming the file and the node, value or initializer, and saying what to do.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError, Message

from compiler.errors import ModelError
from compiler.frontend.dims import MAX_DIM
from compiler.frontend.external import check_external, external_ref

MAX_IR_VERSION = onnx.IR_VERSION
MAX_OPSET = onnx.defs.onnx_opset_version()
MAX_ELEMENTS = 1 << 40  # a tensor larger than this (4 TB of fp32) is a corrupt shape
STANDARD_DOMAINS = ("", "ai.onnx")

# element types the compiler converts (compiler/frontend/convert.py) and their sizes in bytes
ITEMSIZE = {
    onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
    onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1,
    onnx.TensorProto.INT16: 2, onnx.TensorProto.INT32: 4, onnx.TensorProto.INT64: 8,
    onnx.TensorProto.BOOL: 1,
    # quantized storage: float8 one byte, 4-bit integers two to a byte (`_data_size`)
    onnx.TensorProto.FLOAT8E4M3FN: 1, onnx.TensorProto.FLOAT8E4M3FNUZ: 1,
    onnx.TensorProto.FLOAT8E5M2: 1, onnx.TensorProto.FLOAT8E5M2FNUZ: 1,
    onnx.TensorProto.INT4: 1, onnx.TensorProto.UINT4: 1,
}
PACKED_4BIT = (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)
# storage-only types of quantized graphs: weights and QuantizeLinear outputs, never graph inputs
STORAGE_ONLY = frozenset({*PACKED_4BIT, onnx.TensorProto.FLOAT8E4M3FN,
                          onnx.TensorProto.FLOAT8E4M3FNUZ, onnx.TensorProto.FLOAT8E5M2,
                          onnx.TensorProto.FLOAT8E5M2FNUZ})


# -- reading ----------------------------------------------------------------------------------


def read_model(path: Path) -> onnx.ModelProto:
    """Parse a model file's bytes as an ONNX ModelProto; external data is not touched."""
    return parse_model(path, read_model_bytes(path))


def read_model_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model file ({exc.strerror})") from None


def parse_model(path: Path, data: bytes) -> onnx.ModelProto:
    """`data`, the bytes of the model file at `path`, as an ONNX ModelProto."""
    if not data:
        raise ModelError(f"{path} is empty (0 bytes): not an ONNX model; export the model again")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError):
        raise ModelError(f"{path} is not an ONNX model: {_sniff(data)}") from None
    if not proto.HasField("graph") or proto.ir_version <= 0:
        raise ModelError(f"{path} is not an ONNX model: {_sniff(data)} (no graph or IR version)")
    bad = _non_text(proto)
    if bad:
        raise ModelError(f"{path}: {bad} is not valid UTF-8 text; the file is corrupt")
    return proto


def _non_text(msg: Message, where: str = "model") -> str:
    """The first string field holding bytes that are not UTF-8 (protobuf hands proto2 strings
    over undecoded), or ''."""
    for fd, value in msg.ListFields():
        if fd.type not in (fd.TYPE_STRING, fd.TYPE_MESSAGE):
            continue
        values = value if _repeated(fd) else [value]
        for i, v in enumerate(values):
            at = f"{where}.{fd.name}" + (f"[{i}]" if _repeated(fd) else "")
            bad = _non_text(v, at) if fd.type == fd.TYPE_MESSAGE else (
                at if isinstance(v, bytes) else "")
            if bad:
                return bad
    return ""


def _repeated(fd) -> bool:
    flag = getattr(fd, "is_repeated", None)  # protobuf >= 6; `label` is deprecated there
    if flag is None:
        return fd.label == fd.LABEL_REPEATED
    return bool(flag() if callable(flag) else flag)


def _sniff(data: bytes) -> str:
    head = data[:16].lstrip()
    kinds = ((b"\x89PNG", "it is a PNG image"), (b"PK\x03\x04", "it is a zip archive"),
             (b"\x1f\x8b", "it is gzip-compressed"), (b"{", "it looks like JSON text"),
             (b"[", "it looks like JSON text"), (b"<", "it looks like XML/HTML text"))
    for magic, what in kinds:
        if head.startswith(magic):
            return f"{what}; give the .onnx file itself"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in data[:512]):
        return "it is text, not binary protobuf; give the .onnx file itself"
    return "the protobuf data is corrupt or truncated; export or download it again"


# -- the checks -------------------------------------------------------------------------------


def normalize_domains(proto: onnx.ModelProto) -> bool:
    """The standard domain has two spellings, '' and 'ai.onnx'; onnx's tools know only ''.
    True when it respelled something."""
    changed = False
    for node in proto.graph.node:
        if node.domain == "ai.onnx":
            node.domain, changed = "", True
    if not any(op.domain == "" for op in proto.opset_import):
        for op in proto.opset_import:
            if op.domain == "ai.onnx":
                op.domain, changed = "", True
    return changed


def check_model(proto: onnx.ModelProto, label: str, base_dir: Path | None) -> None:
    """Every check on a parsed model; `base_dir` is None for built-in models (no files)."""
    _check_versions(proto, label)
    g = proto.graph
    _check_graph_values(g, label)
    _check_inputs(g, label)
    _check_acyclic(g, label)
    _check_tensors(proto, label, base_dir)
    _check_node_schemas(proto, label)  # after: onnx's checker looks at external-data files


def _check_tensors(proto: onnx.ModelProto, label: str, base_dir: Path | None) -> None:
    for where, tensor in _all_tensors(proto):
        is_weight = where.startswith("initializer ")  # of the main graph
        where = f"{label}: {where}"
        check_tensor(tensor, where)
        ref = external_ref(tensor, where)
        if ref is not None and not is_weight:
            raise ModelError(f"{where}: external data is accepted only for graph initializers; "
                             "store this tensor inline")
        if ref is not None and base_dir is not None:
            try:
                check_external(base_dir, ref, _nbytes(tensor))
            except ModelError as exc:
                raise ModelError(f"{label}: {exc}") from None


def _check_versions(proto: onnx.ModelProto, label: str) -> None:
    if proto.ir_version > MAX_IR_VERSION:
        raise ModelError(f"{label}: IR version {proto.ir_version} is newer than the supported "
                         f"{MAX_IR_VERSION}; re-export with an older onnx or upgrade wafer")
    imports: dict[str, int] = {}
    for op in proto.opset_import:
        domain = "" if op.domain == "ai.onnx" else op.domain
        if domain in imports:
            raise ModelError(f"{label}: opset_import lists domain {op.domain!r} twice")
        if not 1 <= op.version < 1 << 31:
            raise ModelError(f"{label}: opset_import gives domain {op.domain or 'ai.onnx'!r} "
                             f"version {op.version}, which is not a valid opset version")
        imports[domain] = op.version
    version = imports.get("")
    if version is not None and version > MAX_OPSET:
        raise ModelError(f"{label}: opset {version} is newer than the supported {MAX_OPSET}; "
                         "re-export with an older opset or upgrade wafer")
    for node in proto.graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        if domain not in imports:
            dom = node.domain or "ai.onnx"
            raise ModelError(f"{label}: node {_node(node)} is in domain {dom!r}, for which the "
                             "model imports no opset; fix the export")


def _check_graph_values(g: onnx.GraphProto, label: str) -> None:
    """Names defined once, every node input defined, outputs produced, graph not empty."""
    if not g.node:
        raise ModelError(f"{label}: the graph has no nodes; nothing to compile")
    if not g.output:
        raise ModelError(f"{label}: the graph has no outputs; nothing to compile")
    inits = _unique([t.name for t in g.initializer], "initializer", label)
    defined = _unique([v.name for v in g.input], "graph input", label) | inits
    for node in g.node:
        for name in node.output:
            if not name:
                continue
            if name in defined:
                raise ModelError(f"{label}: node {_node(node)} output {name!r} is already defined"
                                 " (by a graph input, initializer or another node); every value"
                                 " must have one producer")
            defined.add(name)
    if g.sparse_initializer:
        raise ModelError(f"{label}: sparse initializer {g.sparse_initializer[0].values.name!r} "
                         "is not supported; store it dense")
    for node in g.node:
        for name in node.input:
            if name and name not in defined:
                raise ModelError(f"{label}: node {_node(node)} input {name!r} is not produced by"
                                 " any node, initializer or graph input; fix the export")
    for v in g.output:
        if v.name not in defined:
            raise ModelError(f"{label}: graph output {v.name!r} is not produced by any node, "
                             "initializer or graph input")


def _unique(names: list[str], what: str, label: str) -> set[str]:
    seen: set[str] = set()
    for name in names:
        if not name:
            raise ModelError(f"{label}: a {what} has an empty name")
        if name in seen:
            raise ModelError(f"{label}: {what} name {name!r} appears twice; names must be unique")
        seen.add(name)
    return seen


def _check_inputs(g: onnx.GraphProto, label: str) -> None:
    inits = {t.name for t in g.initializer}
    for v in g.input:
        if v.name in inits:
            continue  # IR < 4 lists initializers as inputs too
        where = f"{label}: graph input {v.name!r}"
        if not v.type.HasField("tensor_type"):
            kind = (v.type.WhichOneof("value") or "untyped").removesuffix("_type")
            kind = kind.replace("_", " ")
            article = "an" if kind[0] in "aeiou" else "a"
            raise ModelError(f"{where} is {article} {kind} value, not a tensor; only tensor "
                             "inputs are supported")
        tt = v.type.tensor_type
        if tt.elem_type not in ITEMSIZE or tt.elem_type in STORAGE_ONLY:
            raise ModelError(f"{where}: element type {_dtype(tt.elem_type)} is not supported")
        for i, d in enumerate(tt.shape.dim if tt.HasField("shape") else ()):
            if d.HasField("dim_value") and d.dim_value <= 0:
                raise ModelError(f"{where}: dim {i} is {d.dim_value}; zero-sized and negative "
                                 "dims are not supported (every dim must be >= 1)")
            if d.HasField("dim_value") and d.dim_value >= MAX_DIM:
                raise ModelError(f"{where}: dim {i} is {d.dim_value:,}; dims must be in "
                                 f"1..{MAX_DIM - 1:,}")


def _check_acyclic(g: onnx.GraphProto, label: str) -> None:
    """Kahn's algorithm over the nodes; what is left over lies on or after a cycle."""
    producer = {out: i for i, n in enumerate(g.node) for out in n.output if out}
    deps = [{producer[x] for x in n.input if x in producer} for n in g.node]
    users: dict[int, list[int]] = {}
    for i, ds in enumerate(deps):
        for d in ds:
            users.setdefault(d, []).append(i)
    waiting = [len(ds) for ds in deps]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    done = 0
    while ready:
        i = ready.pop()
        done += 1
        for u in users.get(i, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
    if done < len(g.node):
        stuck = [_node(g.node[i]) for i, w in enumerate(waiting) if w > 0]
        more = f" and {len(stuck) - 4} more" if len(stuck) > 4 else ""
        raise ModelError(f"{label}: the graph has a cycle through {', '.join(stuck[:4])}{more}; "
                         "an ONNX graph must be acyclic")


def _check_node_schemas(proto: onnx.ModelProto, label: str) -> None:
    """onnx's own node checker (input and output counts, attribute names and types, required
    attributes) on every node whose op onnx knows. Nodes with subgraphs (control flow) and ops
    onnx does not know are left to the unsupported-op listing."""
    ctx = onnx.checker.C.CheckerContext()
    ctx.ir_version = proto.ir_version
    ctx.opset_imports = {op.domain: op.version for op in proto.opset_import}
    lex = onnx.checker.C.LexicalScopeContext()
    for node in proto.graph.node:
        if _has_subgraph(node) or not onnx.defs.has(node.op_type, node.domain):
            continue
        try:
            onnx.checker.check_node(node, ctx, lex)
        except onnx.checker.ValidationError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ModelError(f"{label}: node {_node(node)}: {first}; fix the export") from None
        _check_dtype_attributes(node, label)


# attributes whose value is an element type (TensorProto.DataType); the checker sees only INT
DTYPE_ATTRIBUTES = {"Cast": "to", "EyeLike": "dtype", "RandomNormal": "dtype",
                    "RandomNormalLike": "dtype", "RandomUniform": "dtype",
                    "RandomUniformLike": "dtype", "Multinomial": "dtype", "Bernoulli": "dtype"}


def _check_dtype_attributes(node: onnx.NodeProto, label: str) -> None:
    name = DTYPE_ATTRIBUTES.get(node.op_type)
    for a in node.attribute:
        if a.name == name and (a.i not in onnx.TensorProto.DataType.values() or a.i == 0):
            raise ModelError(f"{label}: node {_node(node)}: attribute {name} = {a.i} is not an "
                             "ONNX element type; fix the export")


def _has_subgraph(node: onnx.NodeProto) -> bool:
    graphs = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    return any(a.type in graphs or a.HasField("g") or a.graphs for a in node.attribute)


# -- tensors ----------------------------------------------------------------------------------


def check_tensor(t: onnx.TensorProto, where: str) -> None:
    """Element type supported, dims sane, data (inline or external) matching the shape."""
    if t.data_type not in ITEMSIZE:
        raise ModelError(f"{where}: element type {_dtype(t.data_type)} is not supported")
    if any(d < 0 for d in t.dims):
        raise ModelError(f"{where}: negative dim in shape {list(t.dims)}")
    n = math.prod(t.dims)
    if n > MAX_ELEMENTS:
        raise ModelError(f"{where}: shape {list(t.dims)} has {n:,} elements, more than any "
                         "real model; the file is corrupt")
    if t.HasField("segment"):
        raise ModelError(f"{where}: segmented tensors are not supported")
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return  # checked against its file by check_external
    field = onnx.helper.tensor_dtype_to_field(t.data_type)
    have = len(t.raw_data) if t.raw_data else len(getattr(t, field))
    need = _nbytes(t) if t.raw_data else (-(-n // 2) if t.data_type in PACKED_4BIT else n)
    if have != need:
        unit = "bytes of raw_data" if t.raw_data else f"values in {field}"
        raise ModelError(f"{where} has {have:,} {unit} but shape {list(t.dims)} "
                         f"({_dtype(t.data_type)}) needs {need:,}; the file is corrupt")


def _nbytes(t: onnx.TensorProto) -> int:
    n = math.prod(t.dims)
    return -(-n // 2) if t.data_type in PACKED_4BIT else n * ITEMSIZE[t.data_type]


def _all_tensors(proto: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """Every TensorProto of the model with a description of where it sits."""
    yield from _graph_tensors(proto.graph)
    for f in proto.functions:
        for node in f.node:
            yield from _attr_tensors(node, f"function {f.name}: ")


def _graph_tensors(g: onnx.GraphProto, scope: str = "") -> Iterator[tuple[str, onnx.TensorProto]]:
    for t in g.initializer:
        yield f"{scope}initializer {t.name!r}", t
    for node in g.node:
        yield from _attr_tensors(node, scope)


def _attr_tensors(node: onnx.NodeProto, scope: str) -> Iterator[tuple[str, onnx.TensorProto]]:
    for a in node.attribute:
        where = f"{scope}node {_node(node)} attribute {a.name}"
        if a.HasField("t"):
            yield where, a.t
        for t in a.tensors:
            yield where, t
        for sub in [a.g] if a.HasField("g") else []:
            yield from _graph_tensors(sub, f"{where}: ")
        for sub in a.graphs:
            yield from _graph_tensors(sub, f"{where}: ")
        if a.HasField("sparse_tensor") or a.sparse_tensors:
            raise ModelError(f"{where}: sparse tensors are not supported")


def _node(node: onnx.NodeProto) -> str:
    return f"{node.name or '<unnamed>'} ({node.op_type})"


def _dtype(elem_type: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"#{elem_type} (unknown)"
