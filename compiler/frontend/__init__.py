"""ONNX -> ir.Graph. The only package that imports onnx (and onnx_ir, onnxscript)."""

from compiler.frontend.dims import DimRequest, parse_input_shapes
from compiler.frontend.load import FrontendOptions, check_source, drop_kept, load_model

__all__ = [
    "DimRequest", "FrontendOptions", "check_source", "drop_kept", "load_model",
    "parse_input_shapes",
]
