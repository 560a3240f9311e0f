"""One JSON object per line, as Cloud Logging reads it from stdout."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Any

_FIELDS = ("rollout_id", "service", "version", "region")


def log(severity: str, message: str, **fields: Any) -> None:
    entry: dict[str, Any] = {"severity": severity, "message": message,
                             "time": datetime.now(timezone.utc).isoformat()}
    labels = {k: str(fields.pop(k)) for k in _FIELDS if fields.get(k) is not None}
    if labels:
        entry["logging.googleapis.com/labels"] = labels
        entry.update(labels)
    entry.update({k: v for k, v in fields.items() if v is not None})
    sys.stdout.write(json.dumps(entry, default=str) + "\n")
    sys.stdout.flush()


def rollout_fields(rollout: Any) -> dict[str, Any]:
    return {"rollout_id": rollout.id, "service": rollout.service, "version": rollout.version,
            "region": rollout.region}
