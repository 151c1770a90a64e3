"""The v2 codec alone: requests parsed and checked against declared tensors, responses built."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from app.api.v2.tensors import TensorError, TensorSpec, parse_request, response_body

LATENTS = TensorSpec("latents", "FP32", (-1, 4), -1000, 1000, max_rows=8)
LABELS = TensorSpec("labels", "INT64", (-1,), 0, 2, max_rows=8)
SEED = TensorSpec("seed", "INT64", (1,), 0, 2**63 - 1, optional=True)
IMAGES = TensorSpec("images", "UINT8", (-1, 2, 2, 1), 0, 255)
INPUTS = (LATENTS, LABELS, SEED)
OUTPUTS = (IMAGES, TensorSpec("latents", "FP32", (-1, 4)))


def body(inputs: list[dict], binary: bytes = b"", **fields: object) -> tuple[bytes, str | None]:
    header = json.dumps({"inputs": inputs, **fields}).encode()
    return header + binary, (str(len(header)) if binary else None)


def parse(inputs: list[dict], binary: bytes = b"", **fields: object):
    return parse_request(*body(inputs, binary, **fields), INPUTS, OUTPUTS, "tiny.decode")


def tensor(name: str, shape: list[int], datatype: str, data: object) -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def binary_tensor(name: str, array: np.ndarray, datatype: str) -> tuple[dict, bytes]:
    raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype,
        "parameters": {"binary_data_size": len(raw)},
    }, raw


def test_json_inputs_flat_or_nested_become_declared_datatypes() -> None:
    z = [[0.5, -1, 2, 3], [4, 5, 6, 7.25]]
    flat = parse(
        [tensor("latents", [2, 4], "FP32", [v for row in z for v in row]), tensor("labels", [2], "INT64", [0, 2])],
        id="r1",
    )
    nested = parse([tensor("latents", [2, 4], "FP64", z), tensor("labels", [2], "INT32", [0, 2])])
    for parsed in (flat, nested):
        np.testing.assert_array_equal(parsed.inputs["latents"], np.array(z, dtype=np.float32))
        assert parsed.inputs["latents"].dtype == np.float32 and parsed.inputs["labels"].dtype == np.int64
        assert parsed.inputs["labels"].tolist() == [0, 2] and "seed" not in parsed.inputs
    assert flat.id == "r1" and nested.id is None
    assert flat.outputs == [("images", False), ("latents", False)]


def test_binary_inputs_in_order_after_the_header() -> None:
    z = np.arange(8, dtype=np.float16).reshape(2, 4) / 4
    first, z_raw = binary_tensor("latents", z, "FP16")
    second, y_raw = binary_tensor("labels", np.array([1, 2], dtype=np.uint8), "UINT8")
    parsed = parse(
        [first, tensor("seed", [1], "INT64", [7]), second], z_raw + y_raw, parameters={"binary_data_output": True}
    )
    np.testing.assert_array_equal(parsed.inputs["latents"], z.astype(np.float32))
    assert parsed.inputs["labels"].tolist() == [1, 2] and parsed.inputs["seed"].tolist() == [7]
    assert parsed.outputs == [("images", True), ("latents", True)]


def test_requested_outputs_in_their_order_binary_where_asked() -> None:
    outputs = [{"name": "latents"}, {"name": "images", "parameters": {"binary_data": True}}]
    parsed = parse([tensor("latents", [1, 4], "FP32", [0] * 4), tensor("labels", [1], "INT64", [0])], outputs=outputs)
    assert parsed.outputs == [("latents", False), ("images", True)]


Z = tensor("latents", [1, 4], "FP32", [0.0] * 4)
Y = tensor("labels", [1], "INT64", [1])


@pytest.mark.parametrize(
    ("inputs", "binary", "fields", "message"),
    [
        (
            [tensor("latents", [1, 4], "INT64", [0] * 4), Y],
            b"",
            {},
            "latents: datatype 'INT64' is not accepted; declared FP32 (also accepted: FP16, FP64)",
        ),
        ([tensor("latents", [1, 4], "BYTES", ["a"] * 4), Y], b"", {}, "datatype 'BYTES' is not accepted"),
        ([Z, tensor("labels", [1], "FP32", [1.0])], b"", {}, "labels: datatype 'FP32' is not accepted"),
        ([Z, tensor("labels", [1], "INT64", [1.5])], b"", {}, "labels: data must be integers, as datatype INT64 says"),
        ([Z, tensor("labels", [1], "INT64", [True])], b"", {}, "labels: data must be integers"),
        ([tensor("latents", [1, 4], "FP32", ["a", "b", "c", "d"]), Y], b"", {}, "latents: data must be numbers"),
        ([tensor("latents", [1, 4], "FP32", [0.0] * 3), Y], b"", {}, "latents: data has 3 values; the shape takes 4"),
        (
            [tensor("latents", [2, 4], "FP32", [[0.0] * 4, [0.0] * 3]), Y],
            b"",
            {},
            "latents: data is not a regular array",
        ),
        (
            [tensor("latents", [1, 5], "FP32", [0.0] * 5), Y],
            b"",
            {},
            "latents: shape [1, 5] does not match the declared [-1, 4]",
        ),
        ([tensor("latents", [4], "FP32", [0.0] * 4), Y], b"", {}, "latents: shape [4] does not match"),
        ([tensor("latents", [0, 4], "FP32", []), Y], b"", {}, "latents: shape [0, 4] is empty"),
        (
            [tensor("latents", [10**12, 4], "FP32", []), Y],
            b"",
            {},
            "latents: shape [1000000000000, 4]: at most 8 rows allowed",
        ),
        ([tensor("latents", [1, 4], "FP32", None), Y], b"", {}, "latents: no data"),
        (
            [tensor("latents", [1, 4], "FP32", [0, 0, 0, 1e9]), Y],
            b"",
            {},
            "latents: values must be in [-1000, 1000], got 1000000000",
        ),
        ([tensor("latents", [1, 4], "FP16", [0, 0, 0, 1e6]), Y], b"", {}, "latents: 1 values are not finite"),
        ([Z, tensor("labels", [1], "INT64", [3])], b"", {}, "labels: values must be in [0, 2], got 3"),
        ([Z, tensor("labels", [1], "UINT8", [256])], b"", {}, "labels: values out of UINT8 range [0, 255]"),
        (
            [Z, tensor("labels", [2], "INT64", [0, 1])],
            b"",
            {},
            "inputs disagree on the number of rows (latents 1, labels 2)",
        ),
        ([Z], b"", {}, "missing input: labels INT64 [-1]"),
        (
            [Z, Y, tensor("noise", [1], "FP32", [0])],
            b"",
            {},
            "unknown input 'noise'; tiny.decode takes latents FP32 [-1, 4], labels INT64 [-1], seed INT64 [1]",
        ),
        ([Z, Y, Z], b"", {}, "latents: given twice"),
        (
            [Z, Y],
            b"",
            {"outputs": [{"name": "nope"}]},
            "outputs[0]: unknown output 'nope'; tiny.decode has images, latents",
        ),
        (
            [Z, Y],
            b"",
            {"outputs": [{"name": "images", "parameters": {"classification": 2}}]},
            "unsupported parameter 'classification'",
        ),
        ([Z, Y], b"", {"parameters": {"binary_data_output": "yes"}}, "binary_data_output: must be true or false"),
    ],
)
def test_malformed_requests_say_what_is_wrong(inputs: list[dict], binary: bytes, fields: dict, message: str) -> None:
    with pytest.raises(TensorError) as error:
        parse(inputs, binary, **fields)
    assert message in str(error.value)


def test_binary_sizes_are_checked() -> None:
    header, raw = binary_tensor("latents", np.zeros((1, 4), np.float32), "FP32")
    with pytest.raises(TensorError, match=r"latents: binary_data_size is 15; shape and datatype FP32 take 16 bytes"):
        parse([{**header, "parameters": {"binary_data_size": 15}}, Y], raw[:15])
    with pytest.raises(
        TensorError, match=r"latents: binary data ends at byte 16 after the JSON header; the body has 12"
    ):
        parse([header, Y], raw[:12])
    with pytest.raises(
        TensorError, match=r"the body has 20 bytes after the JSON header, but the inputs' binary_data_size add up to 16"
    ):
        parse([header, Y], raw + b"more")
    with pytest.raises(TensorError, match="latents: has both data and binary_data_size"):
        parse([{**header, "data": [0] * 4}, Y], raw)
    with pytest.raises(
        TensorError, match="Inference-Header-Content-Length: '99' is not a length within the 9-byte body"
    ):
        parse_request(b"{}garbage", "99", INPUTS, OUTPUTS, "tiny.decode")


def test_response_json_and_binary() -> None:
    images = np.arange(8, dtype=np.uint8).reshape(2, 2, 2, 1)
    latents = np.array([[0.1, -2, 3, 4], [5, 6, 7, 8]], dtype=np.float32)
    content, length = response_body("tiny.decode", "1", "r1", [("images", images, False), ("latents", latents, False)])
    assert length is None
    document = json.loads(content)
    assert document["id"] == "r1" and document["model_name"] == "tiny.decode" and document["model_version"] == "1"
    assert document["outputs"][0] == {
        "name": "images",
        "datatype": "UINT8",
        "shape": [2, 2, 2, 1],
        "data": list(range(8)),
    }
    np.testing.assert_array_equal(np.array(document["outputs"][1]["data"], dtype=np.float32).reshape(2, 4), latents)
    content, length = response_body("tiny.decode", "1", None, [("images", images, True), ("latents", latents, False)])
    header = json.loads(content[:length])
    assert "id" not in header and header["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert content[length:] == images.tobytes()


def test_a_header_that_is_no_request_is_pydantics_to_describe() -> None:
    """The HTTP layer words pydantic's errors as /v1 does (app/api/errors.py `problems`)."""
    shape = {"name": "latents", "shape": [1, "4"], "datatype": "FP32", "data": [0] * 4}
    for content in (
        b"{not json",
        json.dumps({"inputs": [Z], "extra": 1}).encode(),
        json.dumps({"inputs": [shape]}).encode(),
    ):
        with pytest.raises(ValidationError):
            parse_request(content, None, INPUTS, OUTPUTS, "tiny.decode")
