"""Serving files for an exported YOLO ONNX model: a Triton model repository and a KServe InferenceService.

`write_model_repository()` lays out what Triton's onnxruntime backend loads, with a `config.pbtxt` written from
the graph's own inputs and outputs (read with the `onnx` package, so names, types and shapes cannot drift from
the file); `inference_service()` builds the `serving.kserve.io/v1beta1` manifest whose `storageUri` points at
that repository, served by KServe's Triton runtime over the v2 (Open Inference) protocol.

Runs inside a pipeline step: it needs `onnx` and PyYAML only, not tritonclient or kserve (the tests check the
output against both).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yolokf.core.errors import UsageError

DEFAULT_MAX_BATCH_SIZE = 8

# ONNX element types -> Triton data types. Only the types both sides have; anything else (complex, float8, int4,
# ...) is refused rather than guessed.
# https://github.com/triton-inference-server/server/blob/main/docs/user_guide/model_configuration.md#datatypes
# https://onnx.ai/onnx/api/mapping.html (TensorProto.DataType)
_ONNX_TO_TRITON = {
    1: "TYPE_FP32",  # FLOAT
    2: "TYPE_UINT8",  # UINT8
    3: "TYPE_INT8",  # INT8
    4: "TYPE_UINT16",  # UINT16
    5: "TYPE_INT16",  # INT16
    6: "TYPE_INT32",  # INT32
    7: "TYPE_INT64",  # INT64
    8: "TYPE_STRING",  # STRING
    9: "TYPE_BOOL",  # BOOL
    10: "TYPE_FP16",  # FLOAT16
    11: "TYPE_FP64",  # DOUBLE
    12: "TYPE_UINT32",  # UINT32
    13: "TYPE_UINT64",  # UINT64
    16: "TYPE_BF16",  # BFLOAT16
}

# The model name is both Triton's model directory (letters, digits, '-', '_', '.': model_configuration.md, "Name")
# and the InferenceService's metadata.name, which KServe's webhook checks against IsvcNameFmt
# "[a-z]([-a-z0-9]*[a-z0-9])?" (pkg/apis/serving/v1beta1/inference_service_validation.go). The second is the
# stricter, so it is the rule. 47 at most: Knative names the predictor's revision `<name>-predictor-00001`,
# which must stay a 63-character DNS label.
_NAME_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
NAME_MAX = 63 - len("-predictor-00001")
# Kubernetes namespaces are RFC 1123 labels.
_NAMESPACE_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def check_model_name(name: str) -> str:
    """`name` if Triton and KServe both accept it as a model / InferenceService name, else UsageError."""
    if len(name) > NAME_MAX or not _NAME_RE.fullmatch(name):
        raise UsageError(
            f"Model name {name!r} cannot be served: use 1-{NAME_MAX} lowercase letters, digits and '-', "
            "starting with a letter and ending with a letter or digit (e.g. 'yolov8n-shapes')."
        )
    return name


@dataclass(frozen=True)
class _Tensor:
    """One graph input or output as Triton sees it."""

    name: str
    data_type: str  # Triton's TYPE_*
    dims: list[int]  # the graph's full shape; -1 where a dim is dynamic


def _tensors(onnx_path: Path) -> tuple[list[_Tensor], list[_Tensor]]:
    """The graph's real inputs and outputs (initializers listed as inputs by old exporters are not inputs)."""
    import onnx

    # The graph only: the weights are not needed and may live in external data files.
    model = onnx.load(str(onnx_path), load_external_data=False)
    graph = model.graph
    initializers = {init.name for init in graph.initializer}

    def convert(value: Any, role: str) -> _Tensor:
        if not value.type.HasField("tensor_type"):
            raise UsageError(f"{onnx_path}: {role} {value.name!r} is not a tensor; Triton serves tensor inputs only.")
        tensor_type = value.type.tensor_type
        data_type = _ONNX_TO_TRITON.get(tensor_type.elem_type)
        if data_type is None:
            elem = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
            raise UsageError(
                f"{onnx_path}: {role} {value.name!r} has ONNX type {elem}, which Triton has no type for; "
                f"export with one of {', '.join(sorted(_ONNX_TO_TRITON.values()))}."
            )
        if not tensor_type.HasField("shape"):
            raise UsageError(f"{onnx_path}: {role} {value.name!r} has no shape; re-export the model with shapes.")
        # A named (dim_param) or unset dim is dynamic; Triton writes those as -1.
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor_type.shape.dim]
        return _Tensor(value.name, data_type, dims)

    inputs = [convert(v, "input") for v in graph.input if v.name not in initializers]
    outputs = [convert(v, "output") for v in graph.output]
    return inputs, outputs


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _tensor_block(tensor: _Tensor, batched: bool) -> list[str]:
    dims = tensor.dims[1:] if batched else tensor.dims
    lines = ["  {", f"    name: {_quote(tensor.name)}", f"    data_type: {tensor.data_type}"]
    if dims:
        lines.append(f"    dims: [ {', '.join(str(d) for d in dims)} ]")
    else:
        # A scalar: Triton needs at least one dim, so it is declared [1] and reshaped to [] for the model
        # (model_configuration.md, "Reshape").
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    lines.append("  }")
    return lines


def triton_config(onnx_path: Path, name: str, *, max_batch_size: int) -> str:
    """`config.pbtxt` for Triton's onnxruntime backend, from the graph's real inputs and outputs.

    Batching (`max_batch_size` > 0, batch dim left out of `dims`, `dynamic_batching {}`) only when every input
    and output has a dynamic first dim (an export with dynamic=True); otherwise `max_batch_size: 0` and full dims,
    as Triton requires for a model without a batch dim. Dynamic non-batch dims are -1.
    https://github.com/triton-inference-server/server/blob/main/docs/user_guide/model_configuration.md
    """
    check_model_name(name)
    if max_batch_size < 0:
        raise UsageError(f"max_batch_size must be 0 or more, got {max_batch_size}.")
    inputs, outputs = _tensors(Path(onnx_path))
    if not inputs or not outputs:
        raise UsageError(f"{onnx_path} has no inputs or no outputs; give the exported YOLO .onnx file.")
    # Triton adds the batch dim in front of every input and output, so all of them must have a dynamic one.
    batchable = all(t.dims and t.dims[0] == -1 for t in inputs + outputs)
    batch = max_batch_size if batchable else 0

    lines = [
        f"# Written by yolokf from {Path(onnx_path).name}'s graph.",
        f"name: {_quote(name)}",  # must equal the model's directory name in the repository
        'backend: "onnxruntime"',
        f"max_batch_size: {batch}",
        "input [",
    ]
    for i, tensor in enumerate(inputs):
        lines += _tensor_block(tensor, batch > 0)
        if i < len(inputs) - 1:
            lines[-1] += ","
    lines += ["]", "output ["]
    for i, tensor in enumerate(outputs):
        lines += _tensor_block(tensor, batch > 0)
        if i < len(outputs) - 1:
            lines[-1] += ","
    lines.append("]")
    if batch > 0:
        # Let Triton merge concurrent requests into one batch (default settings: no added queue delay).
        lines.append("dynamic_batching { }")
    return "\n".join(lines) + "\n"


def write_model_repository(
    onnx_path: Path, repository: Path, name: str, *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
) -> Path:
    """Write `repository/NAME/config.pbtxt` and `repository/NAME/1/model.onnx` (a copy); return `repository/NAME`.

    The layout is Triton's model repository (`<model>/<version>/model.onnx`, the onnxruntime backend's default
    file name): https://github.com/triton-inference-server/server/blob/main/docs/user_guide/model_repository.md
    KServe's Triton runtime serves the whole repository, so `repository` (not the returned folder) is the
    InferenceService's storageUri.
    """
    import onnx

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise UsageError(f"{onnx_path} is not a file; give the exported .onnx model.")
    config = triton_config(onnx_path, name, max_batch_size=max_batch_size)
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in graph.initializer):
        # Only model.onnx is copied; weights in side files would be left behind.
        raise UsageError(f"{onnx_path} keeps its weights in external data files; export it as a single .onnx file.")

    model_dir = Path(repository) / name
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, version_dir / "model.onnx")
    (model_dir / "config.pbtxt").write_text(config, encoding="utf-8")
    return model_dir


def inference_service(
    name: str,
    storage_uri: str,
    *,
    namespace: str | None = None,
    gpus: int | None = None,
    service_account: str | None = None,
    runtime: str | None = None,
) -> dict[str, Any]:
    """A `serving.kserve.io/v1beta1` InferenceService serving the model repository at `storage_uri`.

    `spec.predictor.model` with modelFormat onnx and protocolVersion v2, which KServe's Triton runtime
    (kserve-tritonserver) serves; `runtime` names a ServingRuntime instead of KServe choosing one.
    `gpus` adds an `nvidia.com/gpu` limit; `service_account` carries the storage credentials
    (https://kserve.github.io/website/docs/model-serving/storage/overview).
    """
    check_model_name(name)
    if not storage_uri or "://" not in storage_uri:
        raise UsageError(
            f"storageUri {storage_uri!r} is not a URI KServe can fetch; give the model repository's URI, "
            "such as s3://bucket/models/yolo or pvc://claim/models/yolo."
        )
    if namespace is not None and (len(namespace) > 63 or not _NAMESPACE_RE.fullmatch(namespace)):
        raise UsageError(f"Namespace {namespace!r} is not a Kubernetes name: use lowercase letters, digits and '-'.")
    if gpus is not None and gpus < 0:
        raise UsageError(f"gpus must be 0 or more, got {gpus}.")

    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    model: dict[str, Any] = {
        "modelFormat": {"name": "onnx"},
        "protocolVersion": "v2",  # Triton speaks the v2 (Open Inference) protocol only
        "storageUri": storage_uri,
    }
    if runtime:
        model["runtime"] = runtime
    if gpus:
        # Extended resources are limits only; Kubernetes sets the request equal to the limit.
        model["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    predictor: dict[str, Any] = {}
    if service_account:
        predictor["serviceAccountName"] = service_account
    predictor["model"] = model
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": metadata,
        "spec": {"predictor": predictor},
    }


def write_inference_service(manifest: dict[str, Any], path: Path) -> Path:
    """Write the manifest as YAML (for `kubectl apply -f`); return `path`."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    return path
