"""UUIDv7 ids (RFC 9562): sortable by creation time, which Python 3.11 cannot make itself."""

from __future__ import annotations

import os
import time
import uuid


def uuid7() -> str:
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = rand >> 62 & 0xFFF  # 12 bits after the version
    rand_b = rand & ((1 << 62) - 1)  # 62 bits after the variant
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))
