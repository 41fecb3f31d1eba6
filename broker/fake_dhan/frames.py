"""Order-update frames as the live socket has been seen sending them (SPEC §4.1): every key in
camelCase and statuses in title case (``Pending``, ``Part-Traded``, ``Traded``)."""

from __future__ import annotations

import json
from typing import Any

_STATUS = {"TRANSIT": "Transit", "PENDING": "Pending", "TRADED": "Traded",
           "CANCELLED": "Cancelled", "REJECTED": "Rejected", "EXPIRED": "Expired",
           "PART_TRADED": "Part-Traded"}


def camel_frame(frame: str) -> str:
    """The camelCase form of a PascalCase frame; a frame that is not one comes back unchanged."""
    try:
        document = json.loads(frame)
    except ValueError:
        return frame
    data = document.get("Data") if isinstance(document, dict) else None
    if not isinstance(data, dict):
        return frame
    camel: dict[str, Any] = {key[:1].lower() + key[1:]: value for key, value in data.items()}
    status = str(camel.get("status", ""))
    traded, quantity = camel.get("tradedQty") or 0, camel.get("quantity") or 0
    if status == "PENDING" and 0 < traded < quantity:
        status = "PART_TRADED"
    if status in _STATUS:
        camel["status"] = _STATUS[status]
    return json.dumps({"Type": document.get("Type"), "Data": camel})
