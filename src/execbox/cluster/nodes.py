"""The node list: each node writes its own key with a TTL every heartbeat, saying where it
is, what it runs and how much room it has. A node whose key has expired is gone."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from execbox.cluster.link import PREFIX, RedisLink

KNOWN = PREFIX + "nodes"  # a set of every node id ever seen; the live ones have a key


def node_key(node_id: str) -> str:
    return f"{PREFIX}node:{node_id}"


@dataclass(frozen=True)
class NodeInfo:
    id: str
    url: str
    runtimes: list[str]
    capacity: int  # executions at once
    running: int
    queued: int
    started_at: float
    heartbeat_at: float
    version: str

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.running - self.queued)

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "free": self.free}


class Registry:
    def __init__(self, link: RedisLink, ttl_s: float) -> None:
        self.link = link
        self.ttl_s = ttl_s

    def beat(self, info: NodeInfo) -> None:
        def write() -> None:
            pipe = self.link.client.pipeline(transaction=False)
            pipe.set(node_key(info.id), json.dumps(asdict(info)), px=int(self.ttl_s * 1000))
            pipe.sadd(KNOWN, info.id)
            pipe.execute()

        self.link.run(write)

    def leave(self, node_id: str) -> None:
        self.link.run(self.link.client.delete, node_key(node_id))

    def alive(self) -> list[NodeInfo]:
        def read() -> list[NodeInfo]:
            r = self.link.client
            ids = sorted(r.smembers(KNOWN))
            if not ids:
                return []
            values = r.mget([node_key(i) for i in ids])
            return [NodeInfo(**json.loads(v)) for v in values if v]

        return self.link.run(read)

    def get(self, node_id: str) -> NodeInfo | None:
        raw = self.link.run(self.link.client.get, node_key(node_id))
        return NodeInfo(**json.loads(raw)) if raw else None

    def is_alive(self, node_id: str) -> bool:
        return bool(self.link.run(self.link.client.exists, node_key(node_id)))


def best_for_new_session(nodes: list[NodeInfo], me: str, runtime: str | None) -> str:
    """The node with the most free capacity (this node on a tie, then the lowest id)."""
    fit = [n for n in nodes if runtime is None or runtime in n.runtimes] or nodes
    if not fit:
        return me
    return min(fit, key=lambda n: (-n.free, n.id != me, n.id)).id
