"""The Kubernetes manifests in deploy/: valid against the Kubernetes schemas (strictly: an
unknown or misspelt field fails), and consistent with execbox itself. Every EXECBOX_*
variable is a real setting, the probes reach /health on the port execbox listens on, the
Services select the pods they mean, the Redis URL reaches the Redis Service, the keys file
is where execbox is told to read it and in the format it reads, and the memory limit
covers the sandboxes it has to hold."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from execbox.api.auth import load_keys
from execbox.config import Settings
from execbox.jobs import Limits

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
# the oldest Kubernetes these manifests claim, and the newest kubernetes-validate ships
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
NAMESPACE = "execbox"
# the variables Kubernetes expands in env values: $(NAME), and $$ for a literal $
VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
# an EXECBOX_ name in text; template forms such as EXECBOX_DEFAULT_<LIMIT> are skipped
EXECBOX_NAME = re.compile(r"\bEXECBOX_[A-Z0-9_]*[A-Z0-9](?![A-Za-z0-9_<])")
POD_SPEC_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
Doc = dict[str, Any]


def _load() -> list[tuple[str, Doc]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


DOCS = _load()


def _id(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def find(kind: str, name: str) -> Doc:
    found = [d for _, d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in deploy/*.yaml, found {len(found)}"
    return found[0]


def pod_spec(name: str) -> Doc:
    return find("Deployment", name)["spec"]["template"]["spec"]


def container(deployment: str, name: str) -> Doc:
    found = [c for c in pod_spec(deployment)["containers"] if c["name"] == name]
    assert len(found) == 1, f"Deployment {deployment} has no container {name!r}"
    return found[0]


def execbox() -> Doc:
    return container("execbox", "execbox")


def config_env() -> dict[str, str]:
    """The ConfigMaps the execbox container takes its environment from (envFrom)."""
    out: dict[str, str] = {}
    for source in execbox().get("envFrom", []):
        assert "configMapRef" in source, f"unexpected envFrom source {source}"
        out.update(find("ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    return out


def literal_env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in execbox().get("env", []) if "value" in e}


def execbox_env() -> dict[str, str]:
    """The container's environment as execbox sees it: env wins over envFrom."""
    return {**config_env(), **literal_env()}


def settings() -> Settings:
    return Settings.from_env(execbox_env())


def port_number(c: Doc, port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        assert any(p["containerPort"] == port for p in c.get("ports", [])), port
        return port
    named = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == port]
    assert named, f"container {c['name']} has no port named {port!r}"
    return named[0]


def memory_bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    units |= {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    m = re.fullmatch(r"(\d+)([KMGT]i|[kMGT])?", str(quantity))
    assert m, f"unsupported memory quantity {quantity!r}"
    return int(m.group(1)) * units.get(m.group(2) or "", 1)


def known_env_names() -> set[str]:
    names = {"EXECBOX_" + f.name.upper() for f in dataclasses.fields(Settings)}
    names.discard("EXECBOX_LIMITS")  # limits are read per field, below
    for prefix in ("DEFAULT", "MIN", "MAX"):
        names |= {f"EXECBOX_{prefix}_{f.name.upper()}" for f in dataclasses.fields(Limits)}
    return names


# ---- schema ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("path", "doc"), DOCS, ids=[f"{p}:{_id(d)}" for p, d in DOCS])
def test_schema(path: str, doc: Doc, version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("breakage", ["misspelt field", "wrong type", "missing field"])
def test_schema_check_catches_a_broken_manifest(breakage: str) -> None:
    """The validation above is not vacuous: a broken Deployment fails it."""
    broken = copy.deepcopy(find("Deployment", "execbox"))
    c = broken["spec"]["template"]["spec"]["containers"][0]
    if breakage == "misspelt field":
        c["livenessprobe"] = c.pop("livenessProbe")
    elif breakage == "wrong type":
        c["ports"][0]["containerPort"] = "eighty"
    else:
        del c["name"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_the_objects_and_their_namespace() -> None:
    kinds = sorted(_id(d) for _, d in DOCS)
    assert kinds == [
        "ConfigMap/execbox-api-keys",
        "ConfigMap/execbox-config",
        "Deployment/execbox",
        "Deployment/execbox-redis",
        "Namespace/execbox",
        "Service/execbox",
        "Service/execbox-redis",
    ]
    for _, d in DOCS:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == NAMESPACE, _id(d)
    # the pods are privileged: Pod Security Admission must allow it in this namespace
    labels = find("Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    assert find("Deployment", "execbox")["spec"]["replicas"] == 3
    assert find("Deployment", "execbox-redis")["spec"]["replicas"] == 1


# ---- execbox's settings ---------------------------------------------------------------


def test_every_execbox_variable_is_a_setting() -> None:
    """A setting renamed in execbox.config breaks this, instead of being silently ignored.
    The names come from the container's env, the ConfigMaps it reads with envFrom, and
    the entrypoint and README (which set or document some)."""
    known = known_env_names()
    used = {name: "30-execbox.yaml env" for name in literal_env()}
    used |= {name: "envFrom ConfigMap" for name in config_env()}
    for f in ("entrypoint.sh", "Dockerfile", "README.md"):
        used |= {name: f for name in EXECBOX_NAME.findall((DEPLOY / f).read_text())}
    unknown = {n: where for n, where in used.items() if n.startswith("EXECBOX_") and n not in known}
    assert not unknown, f"not execbox settings: {unknown}"
    # the ConfigMap read with envFrom holds settings only (any other key would end up in
    # the environment too)
    assert all(k in known for k in config_env()), config_env()


def test_the_environment_is_a_valid_configuration() -> None:
    env = execbox().get("env", [])
    names = [e["name"] for e in env]
    assert len(names) == len(set(names)), "a variable is set twice"
    assert not set(names) & set(config_env()), "set both in env and in the ConfigMap"
    # Kubernetes expands $(VAR) only from variables defined earlier in the list
    for i, e in enumerate(env):
        for ref in VAR_REF.findall(e.get("value", "")):
            assert ref in names[:i], f"{e['name']} refers to $({ref}), not defined before it"
    s = settings()  # raises on a value execbox cannot read, or limits out of their range
    assert s.host == "0.0.0.0", "execbox must listen on the pod IP, not only on loopback"
    assert s.port == port_number(execbox(), "http")
    assert not s.open_mode
    assert s.state_dir and s.redis_url and s.node_id and s.advertise_url and s.api_keys_file


def test_node_identity_comes_from_the_pod() -> None:
    env = {e["name"]: e for e in execbox()["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    s = settings()
    assert s.node_id == "$(POD_NAME)"
    url = urlsplit(s.advertise_url or "")
    assert (url.scheme, url.hostname, url.port) == ("http", "$(pod_ip)", s.port)


def test_no_service_links() -> None:
    """Service links would put EXECBOX_PORT=tcp://ip:port (from the Service "execbox")
    into the container, which execbox would read as its port."""
    assert pod_spec("execbox")["enableServiceLinks"] is False


# ---- probes, Services, Redis ----------------------------------------------------------


def test_probes_hit_health_on_the_container_port() -> None:
    c = execbox()
    port = settings().port
    probes = {k: c[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in c}
    assert {"readinessProbe", "livenessProbe"} <= set(probes)
    for kind, probe in probes.items():
        get = probe.get("httpGet")
        assert get, f"{kind} is not an HTTP GET"
        assert get["path"] == "/health", kind
        assert get.get("scheme", "HTTP") == "HTTP", kind
        assert port_number(c, get["port"]) == port, kind


@pytest.mark.parametrize(
    ("service", "deployment"), [("execbox", "execbox"), ("execbox-redis", "execbox-redis")]
)
def test_services_select_their_pods(service: str, deployment: str) -> None:
    spec = find("Service", service)["spec"]
    selector = spec["selector"]
    assert selector
    selected = [
        d["metadata"]["name"]
        for _, d in DOCS
        if d["kind"] in POD_SPEC_KINDS
        and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert selected == [deployment]
    d = find("Deployment", deployment)
    labels = d["spec"]["template"]["metadata"]["labels"]
    assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod_containers = d["spec"]["template"]["spec"]["containers"]
    for p in spec["ports"]:
        target = p.get("targetPort", p["port"])
        assert any(
            any(
                cp.get("name") == target or cp["containerPort"] == target
                for cp in c.get("ports", [])
            )
            for c in pod_containers
        ), f"{service} port {p} reaches no container port"


def test_redis_url_points_at_the_redis_service() -> None:
    url = urlsplit(settings().redis_url or "")
    assert url.scheme == "redis"
    service = find("Service", "execbox-redis")
    name = service["metadata"]["name"]
    assert url.hostname in {
        name,
        f"{name}.{NAMESPACE}",
        f"{name}.{NAMESPACE}.svc",
        f"{name}.{NAMESPACE}.svc.cluster.local",
    }
    assert url.port in [p["port"] for p in service["spec"]["ports"]]
    redis = container("execbox-redis", "redis")
    (sp,) = [p for p in service["spec"]["ports"] if p["port"] == url.port]
    assert port_number(redis, sp.get("targetPort", sp["port"])) == 6379


# ---- volumes, keys, resources, security -----------------------------------------------


def _mounts() -> dict[str, Doc]:
    volumes = {v["name"]: v for v in pod_spec("execbox")["volumes"]}
    return {m["mountPath"]: {**m, "volume": volumes[m["name"]]} for m in execbox()["volumeMounts"]}


def test_state_dir_is_a_writable_volume() -> None:
    m = _mounts().get(settings().state_dir)
    assert m, "EXECBOX_STATE_DIR is not a mounted volume"
    assert not m.get("readOnly")
    assert {"emptyDir", "persistentVolumeClaim"} & set(m["volume"])
    assert m["volume"].get("emptyDir", {}).get("medium") != "Memory"


def test_api_keys_file_is_mounted_and_readable_by_execbox(tmp_path: Path) -> None:
    keys_file = Path(settings().api_keys_file or "")
    m = _mounts().get(str(keys_file.parent))
    assert m, "EXECBOX_API_KEYS_FILE is not in a mounted volume"
    assert m.get("readOnly")
    volume = m["volume"]
    source = volume.get("configMap") or volume.get("secret")
    assert source, "the keys volume is neither a ConfigMap nor a Secret"
    items = {i["path"]: i["key"] for i in source.get("items", [])}
    key = items.get(keys_file.name, keys_file.name)
    if "secret" in volume:  # created outside deploy/ (README.md): its content is not here
        assert source["secretName"]
        return
    content = find("ConfigMap", source["name"])["data"][key]
    # execbox's own loader accepts it, and it is not empty: that would be open mode
    copy_ = tmp_path / "api_keys.json"
    copy_.write_text(content)
    keys = load_keys(dataclasses.replace(Settings(), api_keys_file=str(copy_)))
    assert keys and all(len(k) >= 16 for k in keys)
    assert json.loads(content) == keys


def test_memory_limit_covers_the_sandboxes() -> None:
    """Every sandbox is a cgroup below the container's, so the container's limit holds
    them all: MAX_CONCURRENCY sandboxes at the largest memory a request may ask for, plus
    room for the server and the warm pools."""
    s = settings()
    limit = memory_bytes(execbox()["resources"]["limits"]["memory"])
    need = s.max_concurrency * s.limits.maximum.memory_bytes + (512 << 20)
    assert limit >= need, f"memory limit {limit} < {need}"


def test_grace_period_outlasts_the_longest_execution() -> None:
    grace = pod_spec("execbox")["terminationGracePeriodSeconds"]
    assert grace > settings().limits.maximum.wall_time_s


def test_security_context() -> None:
    """What execbox needs (deploy/README.md): root in the host's user namespace and a
    privileged container. Changing it is a decision to make there, not here."""
    spec = pod_spec("execbox")
    sc = execbox()["securityContext"]
    assert sc["privileged"] is True
    assert sc.get("runAsUser", 0) == 0 and sc.get("runAsNonRoot") is not True
    assert spec.get("hostUsers", True) is True
    assert not any(spec.get(k) for k in ("hostPID", "hostIPC", "hostNetwork"))
    assert spec["automountServiceAccountToken"] is False
    redis = container("execbox-redis", "redis")["securityContext"]
    assert redis["allowPrivilegeEscalation"] is False and "privileged" not in redis


# ---- the image ------------------------------------------------------------------------


def test_dockerfile_copies_what_exists() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _dest = [w for w in line.split() if not w.startswith("--")]
        for src in sources:
            assert (REPO / src).exists(), f"COPY {src}: no such file"
    assert '"/opt/execbox/entrypoint.sh"' in text
    # the Dockerfile reads the sandboxes' numpy pin from the Makefile with this pattern
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^NUMPY *:= *numpy==\S+$", makefile, re.M)


def test_entrypoint() -> None:
    script = DEPLOY / "entrypoint.sh"
    assert script.stat().st_mode & 0o111, "entrypoint.sh is not executable"
    subprocess.run(["bash", "-n", str(script)], check=True)
    # sourced, it only defines functions; the uid ranges differ per pod, stay clear of
    # each other and leave what the operator set alone
    show = 'prepare_uid_ranges; echo "$EXECBOX_UID_BASE $EXECBOX_SESSION_UID_BASE"'

    def ranges(pod: str, **env: str) -> list[int]:
        out = subprocess.run(
            ["bash", "-c", f"source {script} && {show}"],
            env={"PATH": "/usr/bin:/bin", "POD_NAME": pod, **env},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return [int(x) for x in out]

    a, b = ranges("execbox-6d4cf56f9b-abcde"), ranges("execbox-6d4cf56f9b-fghij")
    assert a != b
    for uid_base, session_base in (a, b):
        assert 100_000_000 <= uid_base < uid_base + 4 * 4096 <= session_base < 2**31
    assert ranges("x", EXECBOX_UID_BASE="7", EXECBOX_SESSION_UID_BASE="9") == [7, 9]
