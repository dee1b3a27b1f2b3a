"""Firestore values, as the wire's protobufs carry them, to and from Python."""

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.cloud.firestore_v1.types import ArrayValue, MapValue, Value
from google.protobuf.timestamp_pb2 import Timestamp


def decode_value(value: Any) -> Any:
    """A Firestore ``Value`` protobuf as Python, as ``to_dict()`` gives it for
    the types a key row holds; references stay path strings, geo points stay
    protobufs, and timestamps keep microseconds."""
    kind = value.WhichOneof("value_type")
    if kind == "map_value":
        return decode_fields(value.map_value.fields)
    if kind == "array_value":
        return [decode_value(item) for item in value.array_value.values]
    if kind == "timestamp_value":
        return value.timestamp_value.ToDatetime(tzinfo=UTC)
    if kind == "null_value" or kind is None:
        return None
    return getattr(value, kind)


def decode_fields(fields: Any) -> dict[str, Any]:
    """A document's ``fields`` (a map of ``Value`` protobufs) as a dict."""
    return {name: decode_value(value) for name, value in fields.items()}


def encode_value(value: Any) -> Value:
    """Python as a Firestore ``Value``: the types a key row holds."""
    if value is None:
        return Value(null_value=0)
    if isinstance(value, bool):  # before int: a bool is an int
        return Value(boolean_value=value)
    if isinstance(value, int):
        return Value(integer_value=value)
    if isinstance(value, float):
        return Value(double_value=value)
    if isinstance(value, str):
        return Value(string_value=value)
    if isinstance(value, datetime):
        stamp = Timestamp()
        stamp.FromDatetime(value.astimezone(UTC))
        return Value(timestamp_value=stamp)
    if isinstance(value, list | tuple):
        return Value(array_value=ArrayValue(values=[encode_value(v) for v in value]))
    if isinstance(value, Mapping):
        return Value(map_value=MapValue(fields=encode_fields(value)))
    raise TypeError(f"A key row holds no values of type {type(value).__name__}.")


def encode_fields(row: Mapping[str, Any]) -> dict[str, Value]:
    """A row as a document's ``fields``."""
    return {name: encode_value(value) for name, value in row.items()}
