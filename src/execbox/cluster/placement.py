"""Where each session's workspace lives: `execbox:session:<id>` holds its node's id. The
first claim wins (SET NX); the key stays after its node dies, so that the session answers
410 rather than silently starting over empty, until the client deletes the session."""

from __future__ import annotations

from execbox.cluster.link import PREFIX, RedisLink


def session_key(session_id: str) -> str:
    return f"{PREFIX}session:{session_id}"


class Placement:
    def __init__(self, link: RedisLink) -> None:
        self.link = link

    def owner(self, session_id: str) -> str | None:
        return self.link.run(self.link.client.get, session_key(session_id))

    def claim(self, session_id: str, node: str) -> str:
        """Place the session on node unless it is placed already; its owner either way."""

        def claim() -> str:
            r = self.link.client
            if r.set(session_key(session_id), node, nx=True):
                return node
            return r.get(session_key(session_id)) or node

        return self.link.run(claim)

    def claim_all(self, session_ids: list[str], node: str) -> None:
        """Place each session on node unless it is placed already, in one round trip."""

        def claim() -> None:
            pipe = self.link.client.pipeline(transaction=False)
            for sid in session_ids:
                pipe.set(session_key(sid), node, nx=True)
            pipe.execute()

        if session_ids:
            self.link.run(claim)

    def release(self, session_id: str) -> None:
        self.link.run(self.link.client.delete, session_key(session_id))
