"""Sandbox Executor, done fully, over HTTP: handlers, env_vars, sessions and their files,
execution records, async runs with polling, and signed callbacks with retries."""

from __future__ import annotations

import json
import secrets
import time

from fastapi.testclient import TestClient

from execbox import callbacks as cb
from tests.engine.test_callbacks import Receiver


def ex(code: str, language: str = "python", **kw: object) -> dict:
    body = {
        "execution_id": "e-" + secrets.token_hex(6),
        "session_id": kw.pop("session_id", "s-" + secrets.token_hex(6)),
        "code": code,
        "language": language,
        "timeout": 10,
    }
    body.update(kw)
    return body


def wait_for(client: TestClient, eid: str, final: tuple[str, ...], timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        body = client.get(f"/executions/{eid}").json()
        seen.append(body["status"])
        if body["status"] in final:
            return body
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)


def test_python_handler_value_and_exception(client: TestClient) -> None:
    code = "def handler(event):\n    print('log')\n    return {'sum': event['a'] + event['b']}"
    body = client.post("/execute", json=ex(code, event={"a": 2, "b": 3})).json()
    assert (body["status"], body["return_value"], body["stdout"]) == (
        "completed",
        {"sum": 5},
        "log\n",
    )
    body = client.post("/execute", json=ex("def handler(e):\n    raise ValueError('no')")).json()
    assert body["status"] == "failed" and body["exit_code"] == 1
    assert body["error"]["type"] == "ValueError" and body["error"]["message"] == "no"
    assert "Traceback" in body["error"]["traceback"]
    assert body["message"] == "Execution failed: ValueError: no"


def test_js_async_handler_and_shell_event(client: TestClient) -> None:
    code = "exports.handler = async (e) => ({ twice: e.n * 2 });"
    body = client.post("/execute", json=ex(code, "javascript", event={"n": 21})).json()
    assert body["return_value"] == {"twice": 42}, body
    body = client.post(
        "/execute", json=ex('cat; echo; echo "$EVENT"', "shell", event={"k": 1})
    ).json()
    first, second = body["stdout"].splitlines()
    assert json.loads(first) == json.loads(second) == {"k": 1}


def test_blocked_env_vars_get_422(client: TestClient) -> None:
    r = client.post("/execute", json=ex("print(1)", env_vars={"LD_PRELOAD": "/x.so", "OK": "1"}))
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "env_vars", "LD_PRELOAD"]
    body = client.post(
        "/execute", json=ex("import os; print(os.environ['OK'])", env_vars={"OK": "1"})
    ).json()
    assert body["stdout"] == "1\n"


def test_session_workspace_files_and_artifacts(client: TestClient) -> None:
    sid = "s-" + secrets.token_hex(6)
    assert client.put(f"/sessions/{sid}/files/in/data.txt", content=b"uploaded").status_code == 201
    code = "print(open('in/data.txt').read())\nopen('out.json', 'w').write('[1]')"
    body = client.post("/execute", json=ex(code, session_id=sid)).json()
    assert body["stdout"] == "uploaded\n"
    assert [a["path"] for a in body["artifacts"]] == ["out.json"]
    assert body["artifacts"][0]["mime_type"] == "application/json"
    files = {f["path"] for f in client.get(f"/sessions/{sid}/files").json()["files"]}
    assert files == {"in/data.txt", "out.json"}
    assert client.get(f"/sessions/{sid}/files/out.json").content == b"[1]"
    info = client.get(f"/sessions/{sid}").json()
    assert info["session_id"] == sid and info["size_bytes"] > 0 and info["last_used"] > 0
    assert client.delete(f"/sessions/{sid}/files/out.json").status_code == 204
    assert client.get(f"/sessions/{sid}/files/out.json").status_code == 404
    # another session sees none of it
    other = client.post("/execute", json=ex("import os; print(os.listdir('.'))")).json()
    assert other["stdout"] == "[]\n"
    listed = client.get(f"/sessions/{sid}/executions?limit=10").json()
    assert listed["total"] == 1 and listed["executions"][0]["session_id"] == sid
    assert client.delete(f"/sessions/{sid}").status_code == 204
    assert client.get(f"/sessions/{sid}").status_code == 404


def test_file_routes_refuse_escapes_and_symlinks(client: TestClient) -> None:
    sid = "s-" + secrets.token_hex(6)
    client.post("/execute", json=ex("import os; os.symlink('/etc/passwd', 'pw')", session_id=sid))
    r = client.get(f"/sessions/{sid}/files/pw")
    assert r.status_code == 400 and "root:" not in r.text
    assert client.put(f"/sessions/{sid}/files/pw", content=b"x").status_code == 400
    assert client.get(f"/sessions/{sid}/files/a/../../etc/passwd").status_code in (400, 404)
    assert client.get("/sessions/nope-" + secrets.token_hex(4)).status_code == 404


def test_records_lookup_404_and_idempotent_ids(client: TestClient) -> None:
    body = ex("import secrets; print(secrets.token_hex(8))")
    first = client.post("/execute", json=body).json()
    again = client.post("/execute", json=body).json()
    assert again["stdout"] == first["stdout"]  # not run twice
    rec = client.get(f"/executions/{body['execution_id']}").json()
    assert rec["status"] == "completed" and rec["stdout"] == first["stdout"]
    assert client.get("/executions/no-such-id").status_code == 404
    assert client.get("/executions/no-such-id").json()["detail"]


def test_async_runs_with_polling(client: TestClient) -> None:
    body = ex("import time; time.sleep(0.5); print('late')", **{"async": True})
    r = client.post("/execute", json=body)
    assert r.status_code == 202 and r.json()["status"] == "pending"
    done = wait_for(client, body["execution_id"], ("completed", "failed"))
    assert done["stdout"] == "late\n"
    body = ex("print('preferred')")
    r = client.post("/execute", json=body, headers={"Prefer": "respond-async"})
    assert r.status_code == 202
    assert wait_for(client, body["execution_id"], ("completed",))["stdout"] == "preferred\n"


def test_callbacks_are_signed_retried_and_recorded(client: TestClient) -> None:
    recv = Receiver(fail=1)
    try:
        body = ex(
            "def handler(e):\n    return 'called back'", **{"async": True, "callback_url": recv.url}
        )
        assert client.post("/execute", json=body).status_code == 202
        deadline = time.monotonic() + 15
        while len(recv.seen) < 2:
            assert time.monotonic() < deadline, recv.seen
            time.sleep(0.05)
    finally:
        recv.close()
    headers, raw = recv.seen[-1]
    assert cb.verify("test-secret", headers[cb.TIMESTAMP_HEADER], raw, headers[cb.SIGNATURE_HEADER])
    payload = json.loads(raw)
    assert payload["execution_id"] == body["execution_id"]
    assert payload["result"]["return_value"] == "called back"
    time.sleep(0.2)
    attempts = client.get(f"/executions/{body['execution_id']}").json()["callback_attempts"]
    assert [a["status_code"] for a in attempts] == [503, 204]


def test_callback_to_a_host_off_the_allow_list_is_refused(client: TestClient) -> None:
    body = ex("print(1)", **{"async": True, "callback_url": "http://10.0.0.5/hook"})
    r = client.post("/execute", json=body)
    assert r.status_code == 400 and "allow-list" in r.json()["detail"]


def test_a_huge_page_offset_is_a_422_naming_it_not_a_500(client) -> None:
    # found by `make fuzz`: an offset past SQLite's integer range crashed the store
    r = client.get(f"/sessions/any/executions?offset={10**20}")
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["query", "offset"]
