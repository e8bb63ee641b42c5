"""One JSON line per execution, for whoever must answer "who ran what, when"."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any

from execbox.api.auth import Identity
from execbox.jobs import Job, Outcome


class AuditLog:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self._lock = threading.Lock()

    def record(
        self, request_id: str, dialect: str, who: Identity, job: Job, outcome: Outcome
    ) -> None:
        if not self.path:
            return
        code = job.code if job.code is not None else " ".join(job.argv or [])
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "request_id": request_id,
            "dialect": dialect,
            "key": who.masked,
            "client_ip": who.client_ip,
            "language": job.runtime,
            "code_sha256": hashlib.sha256(code.encode()).hexdigest(),
            "code_head": code[:200],
            "status": outcome.status.value,
            "timings": outcome.timings.as_dict(),
        }
        line = json.dumps(entry) + "\n"
        with self._lock, open(self.path, "a") as f:
            f.write(line)
