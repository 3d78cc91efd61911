"""An :class:`~paywarden.signer.core.explain.Explanation` as one JSON document.

The document is what ``Control.ExplainAgent`` returns and ``paywarden explain agent
--json`` prints: RFC 8785 (canonical) JSON, so that two explanations compare byte for
byte. Its keys are the explanation's field names (which follow the pack's own), its
``schema`` names the shape; amounts are decimal text in the asset's decimals, times
are seconds since the Unix epoch, a ratio is decimal text (JCS writes no floats).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from enum import Enum

from paywarden.signer.core.explain import Explanation
from paywarden.signer.encoding import Json, jcs

SCHEMA = "paywarden.explain.agent/v1"


def _json(value: object) -> Json:
    if isinstance(value, Enum):
        return str(value.value)
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return repr(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_json(v) for v in value]
    raise TypeError(f"no JSON form for {type(value).__name__}")


def document(explanation: Explanation) -> dict[str, Json]:
    body = _json(explanation)
    assert isinstance(body, dict)
    return {"schema": SCHEMA, "covered": explanation.power is not None, **body}


def document_bytes(explanation: Explanation) -> bytes:
    return jcs(document(explanation))
