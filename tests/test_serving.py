"""yolokf.promotion.serving, checked with what consumes its files: Triton's model-config protobuf, onnxruntime, and
KServe's own InferenceService model. The ONNX files are real ultralytics exports (untrained yolov8n, imgsz 64)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import kserve.models
import kubernetes.client.models
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from google.protobuf import text_format
from kserve.api_client import ApiClient
from onnx import TensorProto, helper

from yolokf.core.errors import UsageError
from yolokf.promotion.serving import inference_service, triton_config, write_inference_service, write_model_repository

IMGSZ = 64
NAME_RULE = (
    "cannot be served: use 1-47 lowercase letters, digits and '-', starting with a letter and ending with a letter "
    "or digit (e.g. 'yolov8n-shapes')."
)
# Triton data type -> what onnxruntime reports and the numpy dtype to feed it.
TRITON_TYPES = {
    "TYPE_FP32": ("tensor(float)", np.float32),
    "TYPE_FP16": ("tensor(float16)", np.float16),
    "TYPE_INT64": ("tensor(int64)", np.int64),
}


def _load_model_config_pb2() -> types.ModuleType:
    """Triton's tritonclient.grpc.model_config_pb2, loaded from its file.

    `import tritonclient.grpc` also registers Triton's grpc_service.proto, whose `inference.*` messages clash
    with kserve's grpc_predict_v2.proto in protobuf's default pool ("duplicate symbol 'inference.ServerLiveRequest'"),
    so this module could not import both. model_config.proto alone does not clash.
    """
    if "tritonclient.grpc" in sys.modules:
        return sys.modules["tritonclient.grpc"].model_config_pb2
    package = importlib.util.find_spec("tritonclient")
    assert package is not None and package.submodule_search_locations, "tritonclient[grpc] is not installed"
    path = Path(next(iter(package.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


model_config_pb2 = _load_model_config_pb2()


def parse_config(text: str) -> Any:
    """config.pbtxt parsed by Triton's own ModelConfig message (an unknown field or bad value raises)."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def type_name(value: int) -> str:
    return model_config_pb2.DataType.Name(value)


def graph_io(path: Path) -> tuple[list[tuple[str, int, list[int | str]]], list[tuple[str, int, list[int | str]]]]:
    """(name, ONNX element type, shape with dim_param names) of the graph's inputs and outputs, read with onnx."""
    graph = onnx.load(str(path)).graph
    initializers = {i.name for i in graph.initializer}

    def one(v: onnx.ValueInfoProto) -> tuple[str, int, list[int | str]]:
        t = v.type.tensor_type
        return v.name, t.elem_type, [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]

    return [one(v) for v in graph.input if v.name not in initializers], [one(v) for v in graph.output]


def as_triton_dims(shape: list[int | str]) -> list[int]:
    return [-1 if isinstance(d, str) else d for d in shape]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[bool, Path]:
    """{dynamic: path} of two real exports of an untrained yolov8n: dynamic=True and dynamic=False."""
    from ultralytics import YOLO

    folder = tmp_path_factory.mktemp("onnx")
    paths = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)  # a model built from a .yaml exports next to the working folder
        for dynamic in (True, False):
            out = YOLO("yolov8n.yaml").export(format="onnx", imgsz=IMGSZ, dynamic=dynamic, simplify=True)
            paths[dynamic] = Path(out).resolve().rename(folder / f"yolov8n-{'dynamic' if dynamic else 'static'}.onnx")
    return paths


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "static"])
def test_config_matches_the_graph(exported, dynamic):
    path = exported[dynamic]
    config = parse_config(triton_config(path, "yolo", max_batch_size=8))

    assert config.name == "yolo"
    assert config.backend == "onnxruntime"
    graph_inputs, graph_outputs = graph_io(path)
    assert isinstance(graph_inputs[0][2][0], str) is dynamic  # the export's batch dim: named when dynamic
    if dynamic:
        assert config.max_batch_size == 8
        assert config.HasField("dynamic_batching")
    else:
        assert config.max_batch_size == 0
        assert not config.HasField("dynamic_batching")

    skip = 1 if dynamic else 0  # with batching Triton adds the batch dim itself
    for tensors, graph_tensors in ((config.input, graph_inputs), (config.output, graph_outputs)):
        assert [t.name for t in tensors] == [name for name, _, _ in graph_tensors]
        assert [list(t.dims) for t in tensors] == [as_triton_dims(shape)[skip:] for _, _, shape in graph_tensors]
        assert [type_name(t.data_type) for t in tensors] == ["TYPE_FP32"] * len(tensors)
        assert [elem for _, elem, _ in graph_tensors] == [TensorProto.FLOAT] * len(tensors)

    # onnxruntime sees the same names, types and shapes.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for tensors, ort_tensors in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        assert [t.name for t in tensors] == [t.name for t in ort_tensors]
        assert [TRITON_TYPES[type_name(t.data_type)][0] for t in tensors] == [t.type for t in ort_tensors]
        assert [list(t.dims) for t in tensors] == [as_triton_dims(t.shape)[skip:] for t in ort_tensors]

    # What a user reads in the file for yolov8n at imgsz 64 (84 = 4 box + 80 class rows; 8x8 + 4x4 + 2x2 anchors).
    if dynamic:
        assert (list(config.input[0].dims), list(config.output[0].dims)) == ([3, -1, -1], [84, -1])
    else:
        assert (list(config.input[0].dims), list(config.output[0].dims)) == ([1, 3, 64, 64], [1, 84, 84])


def test_no_batching_when_asked_for_none(exported):
    config = parse_config(triton_config(exported[True], "yolo", max_batch_size=0))
    assert config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [-1, 3, -1, -1]


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "static"])
def test_model_repository_serves(exported, tmp_path, dynamic):
    repository = tmp_path / "repository"
    model_dir = write_model_repository(exported[dynamic], repository, "yolov8n-shapes")
    write_model_repository(exported[dynamic], repository, "yolov8n-shapes")  # a retried step rewrites the same files

    assert model_dir == repository / "yolov8n-shapes"
    files = sorted(p.relative_to(repository).as_posix() for p in repository.rglob("*") if p.is_file())
    assert files == ["yolov8n-shapes/1/model.onnx", "yolov8n-shapes/config.pbtxt"]
    model = model_dir / "1" / "model.onnx"
    assert model.read_bytes() == exported[dynamic].read_bytes()
    config = parse_config((model_dir / "config.pbtxt").read_text())
    assert config.name == model_dir.name  # Triton requires the config's name to be the directory's

    # The copied model runs on an input of the config's shape and returns the config's outputs.
    batch = [2] if config.max_batch_size else []
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feeds = {
        t.name: np.zeros(batch + [IMGSZ if d == -1 else d for d in t.dims], TRITON_TYPES[type_name(t.data_type)][1])
        for t in config.input
    }
    results = session.run([t.name for t in config.output], feeds)
    for tensor, result in zip(config.output, results, strict=True):
        dims = batch + list(tensor.dims)
        assert result.dtype == TRITON_TYPES[type_name(tensor.data_type)][1]
        assert len(result.shape) == len(dims)
        assert all(d in (-1, n) for d, n in zip(dims, result.shape, strict=True)), (dims, result.shape)
    assert results[0].shape == ((2, 84, 84) if dynamic else (1, 84, 84))


def _save_graph(path: Path, inputs, outputs, nodes, initializers=(), ir_version: int | None = None) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if ir_version is not None:
        model.ir_version = ir_version
    onnx.save(model, str(path))
    return path


def test_types_and_dims_from_other_graphs(tmp_path):
    """FP16 and INT64 tensors, a dynamic non-batch dim, and an initializer listed as an input (older exporters)."""
    weight = helper.make_tensor("w", TensorProto.INT64, [4], [1, 2, 3, 4])
    path = _save_graph(
        tmp_path / "small.onnx",
        inputs=[
            helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", "n"]),
            helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", 4]),
            helper.make_tensor_value_info("w", TensorProto.INT64, [4]),
        ],
        outputs=[
            helper.make_tensor_value_info("x_out", TensorProto.FLOAT16, ["batch", "n"]),
            helper.make_tensor_value_info("y_out", TensorProto.INT64, ["batch", 4]),
        ],
        nodes=[helper.make_node("Identity", ["x"], ["x_out"]), helper.make_node("Add", ["y", "w"], ["y_out"])],
        initializers=[weight],
        ir_version=8,
    )
    config = parse_config(triton_config(path, "small", max_batch_size=4))
    assert config.max_batch_size == 4
    assert [(t.name, type_name(t.data_type), list(t.dims)) for t in config.input] == [
        ("x", "TYPE_FP16", [-1]),
        ("y", "TYPE_INT64", [4]),
    ]
    assert [(t.name, type_name(t.data_type), list(t.dims)) for t in config.output] == [
        ("x_out", "TYPE_FP16", [-1]),
        ("y_out", "TYPE_INT64", [4]),
    ]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x", "y"]  # onnxruntime agrees: w is a weight


def test_unknown_element_type_is_refused(tmp_path):
    path = _save_graph(
        tmp_path / "complex.onnx",
        inputs=[helper.make_tensor_value_info("z", TensorProto.COMPLEX64, [1, 2])],
        outputs=[helper.make_tensor_value_info("z_out", TensorProto.COMPLEX64, [1, 2])],
        nodes=[helper.make_node("Identity", ["z"], ["z_out"])],
    )
    with pytest.raises(UsageError, match=r"input 'z' has ONNX type COMPLEX64, which Triton has no type for; export"):
        triton_config(path, "complex", max_batch_size=8)
    with pytest.raises(UsageError, match="COMPLEX64"):
        write_model_repository(path, tmp_path / "repository", "complex")
    assert not (tmp_path / "repository").exists()


# --- the InferenceService manifest ---------------------------------------------------------------------------------

_PRIMITIVES: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "bool": bool, "float": (int, float)}


def _model_class(name: str) -> type:
    """A type named in a kserve model's openapi_types: kserve's own, or the Kubernetes client's (V1ObjectMeta...)."""
    klass = getattr(kserve.models, name, None) or getattr(kubernetes.client.models, name, None)
    if klass is None:
        raise ValueError(f"unknown OpenAPI type {name}")
    return klass


def validate(value: Any, openapi_type: str, where: str = "InferenceService") -> None:
    """Check a manifest against the kserve / Kubernetes OpenAPI models; ValueError names the first bad field."""
    if m := re.fullmatch(r"list\[(.+)\]", openapi_type):
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        for i, item in enumerate(value):
            validate(item, m.group(1), f"{where}[{i}]")
    elif m := re.fullmatch(r"dict\(([^,]+), (.+)\)", openapi_type):
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"{where}: expected a mapping with string keys, got {value!r}")
        for key, item in value.items():
            validate(item, m.group(2), f"{where}[{key!r}]")
    elif openapi_type == "object":
        return
    elif openapi_type in _PRIMITIVES:
        if isinstance(value, bool) and openapi_type != "bool" or not isinstance(value, _PRIMITIVES[openapi_type]):
            raise ValueError(f"{where}: expected {openapi_type}, got {value!r}")
    else:
        klass = _model_class(openapi_type)
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a {openapi_type} mapping, got {value!r}")
        fields = {json_key: attr for attr, json_key in klass.attribute_map.items()}
        for key, item in value.items():
            if key not in fields:
                raise ValueError(f"{where}.{key}: not a field of {openapi_type}")
            validate(item, klass.openapi_types[fields[key]], f"{where}.{key}")


def validate_isvc(manifest: dict) -> None:
    validate(manifest, "V1beta1InferenceService")


def _without_empty(value: Any) -> Any:
    """`value` less the empty strings kserve's models fill in as defaults (V1beta1ModelSpec.name is '')."""
    if isinstance(value, dict):
        return {k: _without_empty(v) for k, v in value.items() if v != ""}
    return value


@pytest.fixture
def kserve_client(monkeypatch) -> ApiClient:
    """kserve's ApiClient, able to build the Kubernetes types it names (it looks every class up in kserve.models)."""
    for name in dir(kubernetes.client.models):
        if name.startswith("V1") and not hasattr(kserve.models, name):
            monkeypatch.setattr(kserve.models, name, getattr(kubernetes.client.models, name), raising=False)
    return ApiClient()


FULL = {"namespace": "vision", "gpus": 1, "service_account": "models-s3", "runtime": "kserve-tritonserver"}


@pytest.mark.parametrize("options", [FULL, {}], ids=["all-options", "defaults"])
def test_inference_service_is_valid_kserve(tmp_path, kserve_client, options):
    uri = "s3://models/yolov8n-shapes/v3/repository"
    manifest = inference_service("yolov8n-shapes", uri, **options)
    path = write_inference_service(manifest, tmp_path / "deploy" / "isvc.yaml")

    text = path.read_text()
    loaded = yaml.safe_load(text)
    assert loaded == manifest
    assert list(loaded) == ["apiVersion", "kind", "metadata", "spec"]  # sort_keys=False: reads like kubectl's
    validate_isvc(loaded)

    # KServe's own client deserializes it into its models, and serializing them back loses nothing.
    isvc = kserve_client.deserialize(types.SimpleNamespace(data=json.dumps(loaded)), "V1beta1InferenceService")
    assert isinstance(isvc, kserve.models.V1beta1InferenceService)
    assert _without_empty(kserve_client.sanitize_for_serialization(isvc)) == loaded

    assert isvc.api_version == "serving.kserve.io/v1beta1"
    assert isvc.kind == "InferenceService"
    assert isvc.metadata.name == "yolov8n-shapes"
    model = isvc.spec.predictor.model
    assert model.model_format.name == "onnx"
    assert model.protocol_version == "v2"
    assert model.storage_uri == uri
    assert not model.name  # KServe's webhook refuses a name in a standard predictor ('' is the model's default)
    if options:
        assert isvc.metadata.namespace == "vision"
        assert model.resources.limits == {"nvidia.com/gpu": "1"}
        assert isvc.spec.predictor.service_account_name == "models-s3"
        assert model.runtime == "kserve-tritonserver"
    else:
        assert "namespace" not in loaded["metadata"]
        assert model.resources is None and model.runtime is None
        assert isvc.spec.predictor.service_account_name is None


def test_validator_rejects_misspelt_and_mistyped_fields():
    manifest = inference_service("yolo", "s3://models/yolo")
    validate_isvc(manifest)

    misspelt = json.loads(json.dumps(manifest))
    misspelt["spec"]["predictor"]["model"]["storageURI"] = misspelt["spec"]["predictor"]["model"].pop("storageUri")
    with pytest.raises(ValueError, match=r"spec\.predictor\.model\.storageURI: not a field of V1beta1ModelSpec"):
        validate_isvc(misspelt)

    mistyped = json.loads(json.dumps(manifest))
    mistyped["spec"]["predictor"]["model"]["resources"] = {"limits": {"nvidia.com/gpu": 1}}  # must be a quantity str
    with pytest.raises(ValueError, match=r"resources\.limits\['nvidia\.com/gpu'\]: expected str"):
        validate_isvc(mistyped)

    unknown_meta = json.loads(json.dumps(manifest))
    unknown_meta["metadata"]["label"] = {"app": "yolo"}  # `labels`
    with pytest.raises(ValueError, match=r"metadata\.label: not a field of V1ObjectMeta"):
        validate_isvc(unknown_meta)


# --- bad input --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["YOLOv8n", "8n-yolo", "yolo_v8", "yolo.v8", "yolo-", "", "y" * 48])
def test_bad_model_names(exported, tmp_path, name):
    message = re.escape(f"Model name {name!r} {NAME_RULE}")
    with pytest.raises(UsageError, match=f"^{message}$"):
        write_model_repository(exported[False], tmp_path / "repository", name)
    assert not (tmp_path / "repository").exists()
    with pytest.raises(UsageError, match=f"^{message}$"):
        inference_service(name, "s3://models/yolo")


def test_longest_name_is_accepted(exported, tmp_path):
    name = "y" * 47
    assert write_model_repository(exported[False], tmp_path / "repository", name).name == name
    assert inference_service(name, "s3://models/yolo")["metadata"]["name"] == name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"storage_uri": "/mnt/models/yolo"},
            "storageUri '/mnt/models/yolo' is not a URI KServe can fetch; give the model repository's URI, "
            "such as s3://bucket/models/yolo or pvc://claim/models/yolo.",
        ),
        (
            {"storage_uri": "s3://m/y", "namespace": "Vision_Team"},
            "Namespace 'Vision_Team' is not a Kubernetes name: use lowercase letters, digits and '-'.",
        ),
        ({"storage_uri": "s3://m/y", "gpus": -1}, "gpus must be 0 or more, got -1."),
    ],
    ids=["local-path", "namespace", "gpus"],
)
def test_bad_inference_service_options(kwargs, message):
    with pytest.raises(UsageError, match=f"^{re.escape(message)}$"):
        inference_service("yolo", **kwargs)


def test_missing_onnx_file(tmp_path):
    missing = tmp_path / "best.onnx"
    with pytest.raises(UsageError, match=f"^{re.escape(f'{missing} is not a file; give the exported .onnx model.')}$"):
        write_model_repository(missing, tmp_path / "repository", "yolo")
