"""Triton model configurations (config.pbtxt) from an I/O contract, and their check against Triton's schema.

Three flavours, all from the manifest's contract (names, dtypes, dims), never from numbers kept here:

- `python_config`: the model that runs lru-deploy's own runtime inside Triton's Python backend. Its inputs are
  the model input (`input_ids` [seq] per request) and the sequence batcher's control inputs (START, END, READY,
  CORRID); its output is the prefill contract's `outputs` ([seq, vocab] per request). The state lives in the
  model, keyed by correlation id: Triton's Python backend accepts `sequence_batching { state [...] }` but never
  carries it. The direct strategy gives each live sequence a batch slot; the model batches the steps of the
  sequences that are in one execution.
- `graph_config(..., platform="tensorrt_plan")` / `graph_config(..., backend="onnxruntime")`: the prefill graph
  served by Triton's TensorRT or onnxruntime backend with implicit state (`state` in, `state_out` out, zeros at
  START), sized from the contract. Those backends need every control input to be a graph input, and implicit
  state is per model, so one model (the prefill graph, which takes seq 1 too) serves the prompt and each
  further token; the step graph is not used by this flavour.

`parse_config` checks a config text against `tritonclient.grpc.model_config_pb2.ModelConfig` with
`google.protobuf.text_format.Parse`, which catches wrong field and enum names; tritonclient is imported only
there.
"""
from __future__ import annotations

from typing import Optional

from .. import contract
from ..errors import LRUDeployError

# numpy dtype name (as the contract writes it) -> Triton data type
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}
# Triton data type -> the KServe v2 protocol's datatype string
WIRE_TYPES = {"TYPE_FP32": "FP32", "TYPE_FP16": "FP16", "TYPE_INT64": "INT64", "TYPE_INT32": "INT32",
              "TYPE_UINT64": "UINT64"}

CONTROL_INPUTS = ("START", "END", "READY", "CORRID")
# Parameters the Python-backend model reads from its own config (string values).
P_TARGET, P_BACKEND, P_PRECISION = "lru_deploy_target", "lru_deploy_backend", "lru_deploy_precision"


class TritonConfigError(LRUDeployError):
    """A config.pbtxt that Triton's schema refuses, or no schema to check it against."""


def per_request_dims(t: contract.TensorSpec) -> list[int]:
    """A contract shape without its leading batch axis (Triton's max_batch_size adds it); named axes are -1."""
    if not t.shape or t.shape[0] != "batch":
        raise ValueError(f"{t.name}: the contract shape {list(t.shape)} does not lead with the batch axis")
    return [d if isinstance(d, int) else -1 for d in t.shape[1:]]


def _dims(dims: list[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _tensor(t: contract.TensorSpec) -> str:
    return f'{{ name: "{t.name}" data_type: {TRITON_TYPES[t.dtype]} dims: {_dims(per_request_dims(t))} }}'


def _io(spec: contract.GraphSpec, outputs: list[contract.TensorSpec]) -> str:
    ins = ",\n  ".join(_tensor(t) for t in spec.model_inputs)
    outs = ",\n  ".join(_tensor(t) for t in outputs)
    return f"input [\n  {ins}\n]\noutput [\n  {outs}\n]\n"


def _parameters(params: dict[str, str]) -> str:
    return "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in params.items())


def python_config(name: str, spec: contract.GraphSpec, *, max_batch: int, instances: int, idle_us: int,
                  kind: str, params: dict[str, str]) -> str:
    """The Python-backend model: the runtime of lru-deploy in a stub process per instance, state per sequence.

    spec is the prefill contract (its model input and `outputs` define the model's tensors)."""
    out = next(t for t in spec.outputs if t.name == contract.OUTPUTS)
    controls = (
        '  control_input [\n'
        '    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },\n'
        '    { name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] },\n'
        '    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },\n'
        '    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }\n'
        '  ]\n')
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch}\n'
            + _io(spec, [out])
            + "sequence_batching {\n"
            + f"  max_sequence_idle_microseconds: {idle_us}\n"
            + controls
            + "  direct { }\n}\n"
            + f"instance_group [ {{ count: {instances} kind: {kind} }} ]\n"
            + _parameters(params))


def graph_config(name: str, spec: contract.GraphSpec, *, max_batch: int, instances: int, idle_us: int,
                 platform: Optional[str] = None, backend: Optional[str] = None, kind: Optional[str] = None,
                 model_file: str) -> str:
    """The prefill graph under Triton's TensorRT (platform tensorrt_plan) or onnxruntime backend, with implicit
    state for every state pair of the contract. The oldest strategy batches requests of equal shape across up
    to max_batch * instances live sequences; more wait in Triton's backlog until one ends."""
    if (platform is None) == (backend is None):
        raise ValueError("pass exactly one of platform and backend")
    outs = [t for t in spec.outputs if t.name == contract.OUTPUTS]
    by_name = {t.name: t for t in spec.inputs}
    states = []
    for state_in, state_out in contract.state_pairs(spec):
        t = by_name[state_in]
        dims = _dims(per_request_dims(t))
        states.append(f'    {{ input_name: "{state_in}" output_name: "{state_out}" '
                      f'data_type: {TRITON_TYPES[t.dtype]} dims: {dims}\n'
                      f'      initial_state {{ data_type: {TRITON_TYPES[t.dtype]} dims: {dims} zero_data: true '
                      f'name: "zeros" }} }}')
    engine = f'platform: "{platform}"' if platform else f'backend: "{backend}"'
    group = f"count: {instances}" + (f" kind: {kind}" if kind else "")
    return (f'name: "{name}"\n{engine}\nmax_batch_size: {max_batch}\ndefault_model_filename: "{model_file}"\n'
            + _io(spec, outs)
            + "sequence_batching {\n"
            + f"  max_sequence_idle_microseconds: {idle_us}\n"
            + "  state [\n" + ",\n".join(states) + "\n  ]\n"
            + f"  oldest {{ max_candidate_sequences: {max_batch * instances} max_queue_delay_microseconds: 0 }}\n"
            + "}\n"
            + f"instance_group [ {{ {group} }} ]\n")


def schema():
    """Triton's model-config message class (tritonclient's model_config_pb2), imported here only."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise TritonConfigError(
            f"cannot check Triton model configs: tritonclient's gRPC schema does not import here ({e})",
            "run this in the Triton environment (make triton-env, then .venv/triton/bin/lru-deploy), or "
            "pip install 'tritonclient[grpc]'") from None
    return model_config_pb2.ModelConfig


def parse_config(text: str, where: str = "config.pbtxt"):
    """Parse a config.pbtxt against Triton's schema; a wrong field, enum or value is one TritonConfigError."""
    from google.protobuf import text_format
    message = schema()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise TritonConfigError(f"{where} does not parse as a Triton model config: {e}",
                                "this is a bug in lru-deploy's config writer; please report it") from None
    return message


def config_backend(message) -> str:
    """The backend a parsed config runs on: 'python', 'onnxruntime', 'tensorrt', ... (platform names mapped)."""
    if message.backend:
        return message.backend
    return {"tensorrt_plan": "tensorrt", "onnxruntime_onnx": "onnxruntime"}.get(message.platform, message.platform)
