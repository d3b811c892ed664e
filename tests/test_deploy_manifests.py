"""The Kubernetes manifests (deploy/) and the image definition (Containerfile), checked without a
cluster: every base manifest against the Kubernetes schemas bundled with kubernetes-validate
(strict: an unknown or misplaced field fails), and against the product itself: the probes ask the
routes the API serves on the port the line TOML opens, each overlay's line TOML loads and keeps
its state where the PersistentVolumeClaim is mounted, the pod is hardened like the systemd unit,
and the image is built from the wheel and runs as the user the pod runs as.

The overlays are kustomize input (`kubectl kustomize deploy/overlays/line1`); what this test reads
of them is their files and names. docs/fleet.md.
"""

from __future__ import annotations

import json
import re
import time
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from controller.api import create_app
from controller.config import load_config
from controller.health import Probes

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
OVERLAYS = sorted(p for p in (DEPLOY / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
KUBERNETES = "1.32.0"  # K3s stable at the time of writing; the oldest schema the manifests must pass
CONTAINERFILE = ROOT / "Containerfile"


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def base_resources() -> dict[str, dict]:
    """kind -> the base's manifest of that kind (one each)."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    out: dict[str, dict] = {}
    for name in kustomization["resources"]:
        for doc in documents(BASE / name):
            assert doc["kind"] not in out, f"two {doc['kind']} in the base"
            out[doc["kind"]] = doc
    return out


RESOURCES = base_resources()
POD = RESOURCES["StatefulSet"]["spec"]["template"]["spec"]
CONTROLLER = next(c for c in POD["containers"] if c["name"] == "controller")
ALL_CONTAINERS = [*POD.get("initContainers", []), *POD["containers"]]


def mount_path(container: dict, volume: str) -> str:
    (path,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume]
    return path


def volume(name: str) -> dict:
    (v,) = [v for v in POD["volumes"] if v["name"] == name]
    return v


def containerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Containerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def entrypoint() -> list[str]:
    (args,) = [a for i, a in containerfile() if i == "ENTRYPOINT"]
    return json.loads(args)


@pytest.mark.parametrize("kind", sorted(RESOURCES))
def test_each_base_manifest_is_valid_kubernetes(kind):
    kubernetes_validate.validate(RESOURCES[kind], KUBERNETES, strict=True)


def test_the_strict_validation_refuses_a_misplaced_field():
    """The check above can fail: a probe key at the container's level is not Kubernetes."""
    broken = json.loads(json.dumps(RESOURCES["StatefulSet"]))
    broken["spec"]["template"]["spec"]["containers"][0]["periodSeconds"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_one_controller_per_line_with_its_claim_service_and_budget():
    sts, service, pdb = RESOURCES["StatefulSet"], RESOURCES["Service"], RESOURCES["PodDisruptionBudget"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["replicas"] == 1  # two controllers would both write to the line's PLCs
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] == 1
    assert service["spec"]["publishNotReadyAddresses"] is True  # the HMI while the PLC is down
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "state" and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "api"


def test_probes_ask_the_routes_the_api_serves_on_its_port():
    app = create_app(object(), "t" * 32, probes=Probes(time.monotonic, []))
    served = {r.resource.canonical for r in app.router.routes() if r.method == "GET"}
    probes = {k: CONTROLLER[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["startupProbe"]["path"] == probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert {p["path"] for p in probes.values()} <= served
    (api,) = [p for p in CONTROLLER["ports"] if p["name"] == "api"]
    assert {p["port"] for p in probes.values()} == {"api"}
    start = CONTROLLER["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 180  # TimeoutStartSec=180 of the unit
    for overlay in OVERLAYS:
        assert load_config(overlay / "line.toml").controller.api_port == api["containerPort"], overlay.name


def test_the_pod_is_hardened_like_the_systemd_unit():
    pod = POD["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0 and pod["runAsGroup"] > 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert POD["automountServiceAccountToken"] is False
    for c in ALL_CONTAINERS:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["privileged"] is False and sc["runAsNonRoot"] is True, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        for bound in ("requests", "limits"):
            assert set(c["resources"][bound]) >= {"cpu", "memory"}, (c["name"], bound)
    writable = {m["mountPath"] for m in CONTROLLER["volumeMounts"] if not m.get("readOnly")}
    env = {e["name"]: e["value"] for e in CONTROLLER["env"]}
    assert env["NUMBA_CACHE_DIR"].startswith(mount_path(CONTROLLER, "cache") + "/")  # not the read-only root
    assert writable == {mount_path(CONTROLLER, v) for v in ("state", "cache", "tmp")}


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_each_line_overlay_brings_a_line_toml_that_fits_the_pod(overlay):
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../../base"]
    assert kustomization["namePrefix"] == f"{overlay.name}-"
    (generated,) = kustomization["configMapGenerator"]
    config_volume = volume("config")["configMap"]["name"]
    assert generated["name"] == config_volume and generated["files"] == ["line.toml"]
    assert entrypoint()[-1] == f"{mount_path(CONTROLLER, 'config')}/line.toml"
    c = load_config(overlay / "line.toml").controller  # the file the ConfigMap carries
    assert Path(c.state_dir) == Path(mount_path(CONTROLLER, "state"))  # the PersistentVolumeClaim
    assert c.api_host == "0.0.0.0"  # the kubelet probes the pod's address
    secrets = {volume(v)["secret"]["secretName"] for v in ("tokens-secret", "pki-secret")}
    secrets |= {e["secretRef"]["name"] for e in CONTROLLER["envFrom"]}
    for s in kustomization.get("secretGenerator", []):
        assert s["name"] in secrets, s["name"]
        for f in [*s.get("files", []), *s.get("envs", [])]:
            assert f.startswith("secrets/"), f  # ignored by deploy/.gitignore: never committed
    assert "overlays/*/secrets/" in (DEPLOY / ".gitignore").read_text().split()


def test_the_lines_differ_in_name_and_identity():
    identities = [(c.site, c.line) for c in (load_config(o / "line.toml").controller for o in OVERLAYS)]
    assert len(OVERLAYS) >= 2 and len(set(identities)) == len(identities)


def test_the_containerfile_installs_the_wheel_and_runs_as_the_pods_user():
    steps = containerfile()
    stages = [i for i, (instruction, _) in enumerate(steps) if instruction == "FROM"]
    assert len(stages) == 2
    build, final = steps[stages[0]:stages[1]], steps[stages[1]:]
    assert all(re.search(r"python:3\.11-slim", steps[i][1]) for i in stages)
    assert any(i == "RUN" and re.search(r"\bpip wheel\b.* \.$", a) for i, a in build)
    (install,) = [a for i, a in final if i == "RUN" and "pip install" in a]
    assert "--mount=type=bind,from=build,source=/wheels,target=/wheels" in install  # the build stage's
    assert "--no-index" in install and "--find-links /wheels linesentry" in install  # the wheel only
    (user,) = [a for i, a in final if i == "USER"]
    uid, gid = (int(x) for x in user.split(":"))
    pod = POD["securityContext"]
    assert uid > 0 and (uid, gid) == (pod["runAsUser"], pod["runAsGroup"])
    (volumes,) = [json.loads(a) for i, a in final if i == "VOLUME"]
    assert mount_path(CONTROLLER, "state") in volumes
    (health,) = [a for i, a in final if i == "HEALTHCHECK"]
    assert "/healthz" in health and f":{CONTROLLER['ports'][0]['containerPort']}/" in health
    assert entrypoint() == ["linesentry", "run", "/etc/linesentry/line.toml"]
    assert entrypoint()[0] in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_the_image_build_copies_every_package_of_the_wheel():
    """The build stage's COPY lines and the build context (.dockerignore) hold every package the
    wheel includes (pyproject's packages.find)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    included = [p.rstrip("*").replace(".", "/") for p in pyproject["tool"]["setuptools"]["packages"]["find"]
                ["include"]]
    copied = " ".join(a for i, a in containerfile() if i == "COPY")
    context = (ROOT / ".dockerignore").read_text()
    for package in included:
        assert f"{package}/" in copied and f"!{package}/" in context, package
