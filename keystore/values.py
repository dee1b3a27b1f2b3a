"""Firestore values, as the wire's protobufs carry them, as Python."""

from datetime import UTC
from typing import Any


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
