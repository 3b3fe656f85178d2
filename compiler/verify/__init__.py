"""`wafer verify`: run a compiled schedule on the reference executor and compare it with ONNX
Runtime running the original model, output by output and (with --per-layer) layer by layer.

    inputs.py     seeded random inputs, --inputs / --load-outputs files
    reference.py  ONNX Runtime on the original model (the only onnxruntime importer)
    compare.py    tolerances, per-output and per-layer comparison, NaN/Inf rules
    report.py     TensorCheck / LayerCheck / VerifyReport: verify.json and the printed lines
    run.py        orchestration: open OUT (compiler.outdir.read), run both sides, compare

docs/verify.md has the details.
"""

from compiler.verify.compare import (
    DEFAULT_TOLERANCES,
    FP32,
    PCC_PASS,
    REL_FLOOR,
    TARGET,
    TARGET_STRICT,
    Tolerance,
    check_overrides,
    compare,
    first_diverging_op,
    layer_activations,
    layer_outputs,
    missing_check,
    verify,
)
from compiler.verify.inputs import (
    FALLBACK_VOCAB,
    InputsError,
    index_extent,
    load_expected,
    load_inputs,
    random_inputs,
)
from compiler.verify.reference import ReferenceRunError, run_reference
from compiler.verify.report import (
    ORT,
    VERIFY_SCHEMA_VERSION,
    Divergence,
    LayerCheck,
    TensorCheck,
    VerifyReport,
)
from compiler.verify.run import (
    Artifact,
    Verification,
    VerifyOptions,
    execute,
    open_out,
    refuse_shape_only,
    refuse_streamed_prompt,
    run_verification,
    save_outputs,
    tolerances,
)

__all__ = [
    "DEFAULT_TOLERANCES", "FALLBACK_VOCAB", "FP32", "ORT", "PCC_PASS", "REL_FLOOR", "TARGET",
    "TARGET_STRICT", "VERIFY_SCHEMA_VERSION", "Artifact", "Divergence", "InputsError",
    "LayerCheck", "ReferenceRunError", "TensorCheck", "Tolerance", "Verification",
    "VerifyOptions", "VerifyReport", "check_overrides", "compare", "execute",
    "first_diverging_op", "index_extent", "layer_activations", "layer_outputs", "load_expected",
    "load_inputs", "missing_check", "open_out", "random_inputs", "refuse_shape_only",
    "refuse_streamed_prompt", "run_reference", "run_verification", "save_outputs", "tolerances",
    "verify",
]
