"""Tensors of the Open Inference Protocol (KServe "v2", as Triton speaks it over HTTP): an
inference request parsed into named NumPy arrays, every input checked against what the model
declares before any work, and a response built from arrays, as JSON or with Triton's binary
tensor data extension. Nothing here knows HTTP; app/v2/routes.py does.

A request body is a JSON object, optionally followed by the inputs' raw bytes (little-endian,
row-major, in input order, each input's `binary_data_size` parameter giving its length), the
JSON's length then given by the `Inference-Header-Content-Length` header. Responses mirror
that: outputs asked for with `binary_data` (or the request's `binary_data_output`) come after
the JSON, which then carries their sizes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

# The datatypes a request may send, and their NumPy types (binary data is little-endian).
FLOATS = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
INTEGERS = {
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
}
DATATYPES = {**FLOATS, **INTEGERS}
DATATYPE_NAMES = {np.dtype(dtype): name for name, dtype in DATATYPES.items()}


class TensorError(ValueError):
    """A request that does not fit the protocol or the model's declared tensors; the message,
    for the client, names the tensor at fault."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the model metadata declares it.

    An input accepts any datatype of its declared datatype's family (floats: FP16, FP32, FP64;
    integers: INT8-INT64, UINT8-UINT64) whose values are in [low, high] (and finite), and is
    converted to the declared datatype: the model always gets that.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: a dimension that varies (the first: the rows, one per item)
    low: float | None = None  # inclusive bounds of the values; None: the datatype's own
    high: float | None = None
    optional: bool = False
    max_rows: int | None = None  # the most rows (first dimension) a request may send
    max_row_values: int | None = None  # the most values per row, where other dimensions vary

    @property
    def family(self) -> dict[str, type]:
        return FLOATS if self.datatype in FLOATS else INTEGERS

    @cached_property
    def dtype(self) -> np.dtype:
        return np.dtype(DATATYPES[self.datatype])

    @cached_property
    def bounds(self) -> tuple[float, float]:
        """The inclusive range of values: the declared one, within the datatype's own."""
        low, high = (
            (np.iinfo(self.dtype).min, np.iinfo(self.dtype).max) if self.dtype.kind in "iu" else (-math.inf, math.inf)
        )
        return (low if self.low is None else max(self.low, low), high if self.high is None else min(self.high, high))

    def metadata(self) -> dict[str, Any]:
        """`$metadata_tensor`: name, datatype, shape; an input that may be left out says so in its
        parameters (as Seldon MLServer's metadata has them)."""
        tensor: dict[str, Any] = {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
        if self.optional:
            tensor["parameters"] = {"optional": True}
        return tensor

    def describe(self) -> str:
        """`latents FP32 [-1, 64]`, for messages."""
        return f"{self.name} {self.datatype} {list(self.shape)}"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# A parameter is a string, number or boolean ($parameters); booleans first, so that `true` is
# not read as 1.
Parameter = StrictBool | StrictInt | StrictFloat | StrictStr
Parameters = dict[str, Parameter]


class RequestInput(Strict):
    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: Parameters = Field(default_factory=dict)
    data: Any = None


class RequestOutput(Strict):
    name: StrictStr
    parameters: Parameters = Field(default_factory=dict)


class InferenceRequest(Strict):
    id: StrictStr | None = None
    parameters: Parameters = Field(default_factory=dict)
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


@dataclass
class Inference:
    """A parsed, checked request: the inputs by name, in their declared datatypes, and the
    outputs to send back, each with whether it goes as binary data."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[tuple[str, bool]]  # (name, binary), in response order


def read_header(header: bytes) -> InferenceRequest:
    """The JSON part of a request; pydantic's ValidationError where it is not `$inference_request`."""
    return InferenceRequest.model_validate_json(header)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary data after it (Inference-Header-Content-Length)."""
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.isdecimal() or not 0 < int(header_length) <= len(body):
        raise TensorError(
            f"Inference-Header-Content-Length: {header_length[:40]!r} is not a length within the {len(body)}-byte body"
        )
    size = int(header_length)
    return body[:size], memoryview(body)[size:]


def checked_shape(spec: TensorSpec, shape: list[int]) -> tuple[int, ...]:
    """`shape` if it fits the declared one: same rank, fixed dimensions equal, variable ones at
    least 1, at most max_rows rows and max_row_values values per row. Checked before any data
    is looked at, so a huge declared shape costs nothing."""
    if len(shape) != len(spec.shape) or any(
        declared not in (-1, given) for given, declared in zip(shape, spec.shape, strict=True)
    ):
        raise TensorError(f"{spec.name}: shape {shape} does not match the declared {list(spec.shape)}")
    if any(given < 1 for given in shape):
        raise TensorError(f"{spec.name}: shape {shape} is empty; every dimension must be at least 1")
    if spec.max_rows is not None and shape[0] > spec.max_rows:
        raise TensorError(f"{spec.name}: shape {shape}: at most {spec.max_rows} rows allowed, got {shape[0]}")
    if spec.max_row_values is not None and math.prod(shape[1:]) > spec.max_row_values:
        raise TensorError(
            f"{spec.name}: shape {shape}: at most {spec.max_row_values} values per row allowed, "
            f"got {math.prod(shape[1:])}"
        )
    return tuple(shape)


def json_values(spec: TensorSpec, data: Any, datatype: str, count: int) -> np.ndarray:
    """`data` (flat or nested, row-major) as a flat array of `datatype`, `count` values long."""
    if data is None:
        raise TensorError(f"{spec.name}: no data; send `data` or binary data (parameter binary_data_size)")
    try:
        values = np.asarray(data)
    except ValueError:  # ragged nesting
        raise TensorError(f"{spec.name}: data is not a regular array of numbers") from None
    if values.size != count:
        raise TensorError(f"{spec.name}: data has {values.size} values; the shape takes {count}")
    kinds = "iuf" if datatype in FLOATS else "iu"
    if values.size and values.dtype.kind not in kinds:
        wanted = "numbers" if datatype in FLOATS else "integers"
        raise TensorError(f"{spec.name}: data must be {wanted}, as datatype {datatype} says")
    if values.dtype.kind in "iu" and values.size:
        limits = np.iinfo(DATATYPES[datatype]) if datatype in INTEGERS else None
        if limits is not None and (values.min() < limits.min or values.max() > limits.max):
            raise TensorError(f"{spec.name}: values out of {datatype} range [{limits.min}, {limits.max}]")
    with np.errstate(over="ignore"):  # overflow to inf in FP16 is reported as not finite
        return values.reshape(-1).astype(DATATYPES[datatype])


def binary_values(
    spec: TensorSpec, binary: memoryview, offset: int, size: Parameter, datatype: str, count: int
) -> np.ndarray:
    """The `size` bytes at `offset` of the binary data as `count` values of `datatype`."""
    dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
    expected = count * dtype.itemsize
    if isinstance(size, bool) or not isinstance(size, int) or size != expected:
        raise TensorError(
            f"{spec.name}: binary_data_size is {size!r}; shape and datatype {datatype} take {expected} bytes"
        )
    if offset + size > len(binary):
        raise TensorError(
            f"{spec.name}: binary data ends at byte {offset + size} after the JSON header; the body has "
            f"{len(binary)} bytes there"
        )
    return np.frombuffer(binary[offset : offset + size], dtype=dtype).astype(DATATYPES[datatype])


def number(value: float) -> str:
    """A bound or value for messages: integers whole, floats short."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**64 else f"{value:g}"


def converted(spec: TensorSpec, values: np.ndarray, datatype: str) -> np.ndarray:
    """`values` (of the sent `datatype`, at least one) checked against the declared range and
    converted to the declared datatype."""
    low, high = spec.bounds
    least, most = values.min(), values.max()  # NaN and infinities show in these
    if datatype in FLOATS and not (math.isfinite(least) and math.isfinite(most)):
        raise TensorError(f"{spec.name}: {int((~np.isfinite(values)).sum())} values are not finite")
    if least < low or most > high:
        bad = values[(values < low) | (values > high)][0]
        raise TensorError(f"{spec.name}: values must be in [{number(low)}, {number(high)}], got {number(bad.item())}")
    return values.astype(spec.dtype, copy=False)


def read_input(spec: TensorSpec, given: RequestInput, binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    """One input as an array of the declared datatype and shape, and how many binary bytes it used."""
    if given.datatype not in spec.family:
        raise TensorError(
            f"{spec.name}: datatype {given.datatype!r} is not accepted; declared {spec.datatype} "
            f"(also accepted: {', '.join(name for name in spec.family if name != spec.datatype)})"
        )
    shape = checked_shape(spec, given.shape)
    count = math.prod(shape)
    unknown = sorted(set(given.parameters) - {"binary_data_size"})
    if unknown:
        raise TensorError(f"{spec.name}: unsupported parameter {unknown[0]!r} (only binary_data_size)")
    if "binary_data_size" in given.parameters:
        if given.data is not None:
            raise TensorError(f"{spec.name}: has both data and binary_data_size; send one")
        size = given.parameters["binary_data_size"]
        values = binary_values(spec, binary, offset, size, given.datatype, count)
        used = int(size)
    else:
        values, used = json_values(spec, given.data, given.datatype, count), 0
    return converted(spec, values, given.datatype).reshape(shape), used


def read_inputs(
    request: InferenceRequest, binary: memoryview, specs: Sequence[TensorSpec], model: str
) -> dict[str, np.ndarray]:
    """Every input, checked: known names, each once, every required one present, datatypes,
    shapes, sizes and values as declared, and every binary byte accounted for."""
    declared = {spec.name: spec for spec in specs}
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for given in request.inputs:
        spec = declared.get(given.name)
        if spec is None:
            raise TensorError(
                f"unknown input {given.name[:100]!r}; {model} takes {', '.join(s.describe() for s in specs)}"
            )
        if given.name in arrays:
            raise TensorError(f"{given.name}: given twice")
        arrays[given.name], used = read_input(spec, given, binary, offset)
        offset += used
    if offset != len(binary):
        raise TensorError(
            f"the body has {len(binary)} bytes after the JSON header, but the inputs' binary_data_size "
            f"add up to {offset}"
        )
    missing = [spec.describe() for spec in specs if not spec.optional and spec.name not in arrays]
    if missing:
        raise TensorError(f"missing input: {', '.join(missing)}")
    # Inputs whose first dimension varies are the request's rows (latents and their labels, say).
    rows = {name: len(arrays[name]) for name in arrays if declared[name].shape[0] == -1}
    if len(set(rows.values())) > 1:
        counts = ", ".join(f"{name} {count}" for name, count in rows.items())
        raise TensorError(f"inputs disagree on the number of rows ({counts}); give one row of each per item")
    return arrays


def requested_outputs(request: InferenceRequest, specs: Sequence[TensorSpec], model: str) -> list[tuple[str, bool]]:
    """(name, binary) of each output to send: those asked for, else all; binary where asked
    (`binary_data`), else as the request's `binary_data_output` says (default: JSON)."""
    default = request.parameters.get("binary_data_output", False)
    if not isinstance(default, bool):
        raise TensorError(f"parameters.binary_data_output: must be true or false, got {default!r}")
    names = [spec.name for spec in specs]
    if request.outputs is None:
        return [(name, default) for name in names]
    chosen: list[tuple[str, bool]] = []
    for i, output in enumerate(request.outputs):
        if output.name not in names:
            raise TensorError(f"outputs[{i}]: unknown output {output.name[:100]!r}; {model} has {', '.join(names)}")
        if output.name in (name for name, _ in chosen):
            raise TensorError(f"outputs[{i}]: {output.name} asked for twice")
        unknown = sorted(set(output.parameters) - {"binary_data"})
        if unknown:
            raise TensorError(f"outputs[{i}]: unsupported parameter {unknown[0]!r} (only binary_data)")
        binary = output.parameters.get("binary_data", default)
        if not isinstance(binary, bool):
            raise TensorError(f"outputs[{i}].parameters.binary_data: must be true or false, got {binary!r}")
        chosen.append((output.name, binary))
    return chosen


def parse_request(
    body: bytes, header_length: str | None, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], model: str
) -> Inference:
    """A v2 inference request body, checked against the model's declared tensors: TensorError
    where it does not fit them, pydantic's ValidationError where its JSON is not a request."""
    header, binary = split_body(body, header_length)
    request = read_header(header)
    return Inference(
        id=request.id,
        inputs=read_inputs(request, binary, inputs, model),
        outputs=requested_outputs(request, outputs, model),
    )


def response_output(name: str, array: np.ndarray, binary: bool) -> tuple[dict[str, Any], bytes]:
    """`$response_output` of `array`, and its bytes when it goes as binary data."""
    datatype = DATATYPE_NAMES[array.dtype]
    output: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if not binary:
        output["data"] = array.reshape(-1).tolist()
        return output, b""
    raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    output["parameters"] = {"binary_data_size": len(raw)}
    return output, raw


def response_body(
    model: str, version: str, request_id: str | None, outputs: Iterable[tuple[str, np.ndarray, bool]]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it (for the
    Inference-Header-Content-Length header)."""
    document: dict[str, Any] = {"model_name": model, "model_version": version}
    if request_id is not None:
        document["id"] = request_id
    parts = [response_output(name, array, binary) for name, array, binary in outputs]
    document["outputs"] = [output for output, _ in parts]
    header = json.dumps(document, separators=(",", ":")).encode()
    binary = b"".join(raw for _, raw in parts)
    if not binary and not any("parameters" in output for output, _ in parts):
        return header, None
    return header + binary, len(header)
