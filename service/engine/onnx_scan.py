"""A model file is served only when it is self-contained: no tensor may live in external data.

ONNX lets a tensor point at a separate file (`external_data`, `data_location = EXTERNAL`); the service
builds its sessions from the bytes it verified (sha256 against the manifest), so a tensor read from another
file would be data nobody checked. This walks the protobuf wire format of the model (ModelProto → graph →
initializers, node attributes, subgraphs) without the `onnx` package, which the service does not install;
raw tensor data is skipped in one step, so a large model costs milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator

# Field numbers from onnx.proto (ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto,
# SparseTensorProto); wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32.
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_FUNCTION_NODE = 7
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_EXTERNAL = 1


class ProtobufError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ProtobufError("truncated or overlong varint")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of each field: an int for varints, the bytes for length-delimited fields."""
    i, end = 0, len(buf)
    while i < end:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            yield number, value
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > end:
                raise ProtobufError("a length-delimited field runs past its message")
            yield number, buf[i : i + length]
            i += length
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
    if i != end:
        raise ProtobufError("a fixed-size field runs past its message")


def _sub(value: int | memoryview) -> memoryview:
    if isinstance(value, int):
        raise ProtobufError("expected a message, found a number")
    return value


def _tensor(buf: memoryview) -> Iterator[str]:
    name, external = "", False
    for number, value in _fields(buf):
        if number == _TENSOR_NAME and not isinstance(value, int):
            name = bytes(value).decode("utf-8", "replace")
        elif number == _TENSOR_EXTERNAL_DATA or (number == _TENSOR_DATA_LOCATION and value == _EXTERNAL):
            external = True
    if external:
        yield name or "<unnamed>"


def _sparse(buf: memoryview) -> Iterator[str]:
    for number, value in _fields(buf):
        if number in (_SPARSE_VALUES, _SPARSE_INDICES):
            yield from _tensor(_sub(value))


def _node(buf: memoryview) -> Iterator[str]:
    for number, value in _fields(buf):
        if number != _NODE_ATTRIBUTE:
            continue
        for attr_number, attr_value in _fields(_sub(value)):
            if attr_number in (_ATTR_T, _ATTR_TENSORS):
                yield from _tensor(_sub(attr_value))
            elif attr_number in (_ATTR_G, _ATTR_GRAPHS):
                yield from _graph(_sub(attr_value))
            elif attr_number in (_ATTR_SPARSE, _ATTR_SPARSES):
                yield from _sparse(_sub(attr_value))


def _graph(buf: memoryview) -> Iterator[str]:
    for number, value in _fields(buf):
        if number == _GRAPH_INITIALIZER:
            yield from _tensor(_sub(value))
        elif number == _GRAPH_SPARSE_INITIALIZER:
            yield from _sparse(_sub(value))
        elif number == _GRAPH_NODE:
            yield from _node(_sub(value))


def external_tensors(model_bytes: bytes) -> list[str]:
    """Names of the tensors of an ONNX model that live in external data (empty: self-contained).
    Raises ProtobufError when the bytes are not a protobuf message."""
    found: list[str] = []
    for number, value in _fields(memoryview(model_bytes)):
        if number == _MODEL_GRAPH:
            found += _graph(_sub(value))
        elif number == _MODEL_FUNCTIONS:
            for fn_number, fn_value in _fields(_sub(value)):
                if fn_number == _FUNCTION_NODE:
                    found += _node(_sub(fn_value))
    return found
