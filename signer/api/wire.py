"""Requests carrying fields this version does not know are refused.

Protobuf keeps unknown fields silently; a field that a newer client thinks is
meaningful (say, an approval flag) would be ignored here. Fail closed instead.
"""

from __future__ import annotations

from google.protobuf import unknown_fields
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from paywarden.signer.errors import InvalidInput, Reason


def reject_unknown_fields(message: Message, path: str = "") -> None:
    unknown = unknown_fields.UnknownFieldSet(message)
    if len(unknown):
        numbers = sorted({unknown[i].field_number for i in range(len(unknown))})
        where = path or message.DESCRIPTOR.name
        raise InvalidInput(Reason.UNKNOWN_FIELD, f"{where} has unknown fields {numbers}")
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        name = f"{path}.{field.name}" if path else field.name
        if field.is_repeated:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                continue
            for i, item in enumerate(value):
                reject_unknown_fields(item, f"{name}[{i}]")
        else:
            reject_unknown_fields(value, name)
