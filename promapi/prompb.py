"""The remote-read messages of ``prompb.proto``, as classes of Google's protobuf runtime.

The classes are built at import from a descriptor declared below (the same messages, fields and
numbers as the ``.proto`` file, which a test compiles with ``protoc`` and compares), in a
descriptor pool of their own. No generated ``_pb2`` module is committed: generated code is tied
to the runtime's major version, while a descriptor pool and ``message_factory.GetMessageClass``
are public API in every runtime since 4.25, and the upb C backend parses and serializes as fast
as generated classes would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

if TYPE_CHECKING:
    from google.protobuf.internal.containers import (
        RepeatedCompositeFieldContainer,
        RepeatedScalarFieldContainer,
    )

PACKAGE = "prometheus"
FILE_NAME = "prompb.proto"

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "double": _F.TYPE_DOUBLE,
    "int64": _F.TYPE_INT64,
    "string": _F.TYPE_STRING,
    "bool": _F.TYPE_BOOL,
}
_ENUMS = {
    "LabelMatcher": ("Type", ("EQ", "NEQ", "RE", "NRE")),
    "ReadRequest": ("ResponseType", ("SAMPLES", "STREAMED_XOR_CHUNKS")),
}
MESSAGES: dict[str, tuple[tuple[str, int, str, bool], ...]] = {
    # message: (field, number, type, repeated); a type not in _SCALARS names a message or enum
    "Sample": (("value", 1, "double", False), ("timestamp", 2, "int64", False)),
    "TimeSeries": (("labels", 1, "Label", True), ("samples", 2, "Sample", True)),
    "Label": (("name", 1, "string", False), ("value", 2, "string", False)),
    "LabelMatcher": (
        ("type", 1, "LabelMatcher.Type", False),
        ("name", 2, "string", False),
        ("value", 3, "string", False),
    ),
    "ReadHints": (
        ("step_ms", 1, "int64", False),
        ("func", 2, "string", False),
        ("start_ms", 3, "int64", False),
        ("end_ms", 4, "int64", False),
        ("grouping", 5, "string", True),
        ("by", 6, "bool", False),
        ("range_ms", 7, "int64", False),
    ),
    "ReadRequest": (
        ("queries", 1, "Query", True),
        ("accepted_response_types", 2, "ReadRequest.ResponseType", True),
    ),
    "ReadResponse": (("results", 1, "QueryResult", True),),
    "Query": (
        ("start_timestamp_ms", 1, "int64", False),
        ("end_timestamp_ms", 2, "int64", False),
        ("matchers", 3, "LabelMatcher", True),
        ("hints", 4, "ReadHints", False),
    ),
    "QueryResult": (("timeseries", 1, "TimeSeries", True),),
}


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The descriptor of ``prompb.proto``, as ``protoc`` would describe it."""
    file = descriptor_pb2.FileDescriptorProto(name=FILE_NAME, package=PACKAGE, syntax="proto3")
    enum_types = {f"{message}.{name}" for message, (name, _) in _ENUMS.items()}
    for message_name, fields in MESSAGES.items():
        message = file.message_type.add(name=message_name)
        if message_name in _ENUMS:
            enum_name, values = _ENUMS[message_name]
            enum = message.enum_type.add(name=enum_name)
            for number, value in enumerate(values):
                enum.value.add(name=value, number=number)
        for name, number, kind, repeated in fields:
            field = message.field.add(
                name=name,
                number=number,
                label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
            )
            if kind in _SCALARS:
                field.type = _SCALARS[kind]
            else:
                field.type = _F.TYPE_ENUM if kind in enum_types else _F.TYPE_MESSAGE
                field.type_name = f".{PACKAGE}.{kind}"
    return file


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(file_descriptor())


def _message(name: str) -> type[Message]:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


if TYPE_CHECKING:
    # What the type checker knows of the classes built below: the fields of MESSAGES, typed as
    # protobuf's runtime gives them (a test checks that the two lists of fields agree).

    class Sample(Message):
        value: float
        timestamp: int

        def __init__(self, *, value: float = ..., timestamp: int = ...) -> None: ...

    class Label(Message):
        name: str
        value: str

    class TimeSeries(Message):
        labels: RepeatedCompositeFieldContainer[Label]
        samples: RepeatedCompositeFieldContainer[Sample]

    class LabelMatcher(Message):
        type: int
        name: str
        value: str

    class ReadHints(Message):
        step_ms: int
        func: str
        start_ms: int
        end_ms: int
        grouping: RepeatedScalarFieldContainer[str]
        by: bool
        range_ms: int

    class Query(Message):
        start_timestamp_ms: int
        end_timestamp_ms: int
        matchers: RepeatedCompositeFieldContainer[LabelMatcher]
        hints: ReadHints

    class ReadRequest(Message):
        queries: RepeatedCompositeFieldContainer[Query]
        accepted_response_types: RepeatedScalarFieldContainer[int]

    class QueryResult(Message):
        timeseries: RepeatedCompositeFieldContainer[TimeSeries]

    class ReadResponse(Message):
        results: RepeatedCompositeFieldContainer[QueryResult]

else:
    Sample = _message("Sample")
    TimeSeries = _message("TimeSeries")
    Label = _message("Label")
    LabelMatcher = _message("LabelMatcher")
    ReadHints = _message("ReadHints")
    ReadRequest = _message("ReadRequest")
    ReadResponse = _message("ReadResponse")
    Query = _message("Query")
    QueryResult = _message("QueryResult")

SAMPLES = 0
"""``ReadRequest.ResponseType.SAMPLES``: the one response type ServerTrack answers with."""
RESPONSE_TYPES = dict(enumerate(_ENUMS["ReadRequest"][1]))
