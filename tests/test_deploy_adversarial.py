"""The deployment as Kubernetes exercises it, beyond what kubernetes-validate --strict checks: the
names the cluster DNS gives a line's Service and pod reach the API (Host header check), the
kubelet's probe (Host: the pod's IP) passes it, and the references inside the pod spec (volumes,
probe ports, selectors, the init container's copies) point at things that exist. docs/fleet.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import stat
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from controller.api import ApiServer, create_app
from controller.config import load_config
from controller.health import Probes
from controller.roles import TOKEN_FILES
from controller.statedir import StateDir
from tests.test_deploy_manifests import (
    ALL_CONTAINERS,
    CONTROLLER,
    OVERLAYS,
    POD,
    RESOURCES,
    ROOT,
    containerfile,
)

CLUSTER_DOMAIN = "cluster.local"  # K3s' and kubeadm's default


def dns_names(overlay) -> list[str]:
    """Every name the cluster DNS answers for the line's headless Service and its pod, short (search
    path of the namespace, or of another namespace) and fully qualified."""
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    service = kustomization["namePrefix"] + RESOURCES["Service"]["metadata"]["name"]
    pod = f"{kustomization['namePrefix']}{RESOURCES['StatefulSet']['metadata']['name']}-0"
    namespace = kustomization["namespace"]
    out = []
    for name in (service, f"{pod}.{service}"):
        qualified = f"{name}.{namespace}.svc"
        out += [name, f"{name}.{namespace}", qualified, f"{qualified}.{CLUSTER_DOMAIN}"]
    return out


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
async def test_the_cluster_names_of_a_line_and_the_kubelets_probe_pass_the_host_check(overlay):
    c = load_config(overlay / "line.toml").controller
    probes = Probes(lambda: 0.0, [])
    probes.started()
    app = create_app(object(), "t" * 32, reads_need_token=c.reads_need_token,
                     allowed_hosts={c.api_host, *c.api_allowed_hosts}, probes=probes)  # as runtime.py
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        async def status(host: str) -> int:
            async with http.get(server.make_url("/healthz"), headers={"Host": host}) as r:
                return r.status

        refused = [n for n in dns_names(overlay) if await status(f"{n}:{c.api_port}") == 421]
        assert refused == [], f"names of {overlay.name} refused by the Host check: {refused}"
        for pod_ip in ("10.42.0.7", "[fd00:10:42::7]"):  # the kubelet's probe: Host is the pod's address
            assert await status(f"{pod_ip}:{c.api_port}") == 200
        assert await status("attacker.example") == 421  # the check still refuses other names


def test_every_reference_in_the_pod_spec_exists():
    volumes = {v["name"] for v in POD["volumes"]}
    claims = {t["metadata"]["name"] for t in RESOURCES["StatefulSet"]["spec"]["volumeClaimTemplates"]}
    assert not volumes & claims
    for c in ALL_CONTAINERS:
        for m in c["volumeMounts"]:
            assert m["name"] in volumes | claims, (c["name"], m["name"])
    used = {m["name"] for c in ALL_CONTAINERS for m in c["volumeMounts"]}
    assert volumes | claims == used  # no volume defined and never mounted
    ports = {p["name"] for p in CONTROLLER["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert CONTROLLER[probe]["httpGet"]["port"] in ports, probe
    labels = RESOURCES["StatefulSet"]["spec"]["template"]["metadata"]["labels"]
    (service_port,) = RESOURCES["Service"]["spec"]["ports"]
    assert service_port["targetPort"] in ports
    for kind, selector in (("StatefulSet", RESOURCES["StatefulSet"]["spec"]["selector"]["matchLabels"]),
                           ("Service", RESOURCES["Service"]["spec"]["selector"]),
                           ("PodDisruptionBudget", RESOURCES["PodDisruptionBudget"]["spec"]["selector"]
                            ["matchLabels"])):
        assert selector and selector.items() <= labels.items(), kind


def secret_volume(path: Path, files: dict[str, str]) -> None:
    """A Secret volume as the kubelet writes it: the files in a timestamped directory, `..data` a
    link to it, each key a link through `..data`, all 0440 (defaultMode 0400 plus fsGroup's g+r)."""
    data = path / "..2026_12_01_10_00_00.000000001"
    data.mkdir(parents=True)
    for name, text in files.items():
        (data / name).write_text(text)
        (data / name).chmod(0o440)
        (path / name).symlink_to(f"..data/{name}")
    (path / "..data").symlink_to(data.name)


def test_the_init_container_copies_the_secrets_to_files_the_controller_keeps(tmp_path):
    """The init container's script, run by a real shell on a Secret-like layout: the controller then
    uses the Secret's tokens as they are (a token it replaced would leave every client of the
    Secret with a 401) and the OPC UA key is 0600 (the driver refuses a group-readable key)."""
    (init,) = POD["initContainers"]
    mounts = {m["name"]: Path(m["mountPath"]) for m in init["volumeMounts"]}
    where = {name: tmp_path / str(path).lstrip("/") for name, path in mounts.items()}  # same tails
    for name in ("state", "pki"):
        where[name].mkdir(mode=0o2770, parents=True)  # fsGroup's setgid, group-writable volume roots
    tokens = {name: secrets.token_urlsafe(32) + "\n" for name in TOKEN_FILES.values()}  # docs/fleet.md
    secret_volume(where["tokens-secret"], tokens)
    secret_volume(where["pki-secret"], {"client.der": "cert", "client_key.pem": "key", "server.der": "cert"})
    longest_first = sorted((str(p) for p in mounts.values()), key=len, reverse=True)
    paths = re.compile("|".join(map(re.escape, longest_first)))
    script = paths.sub(lambda m: str(tmp_path) + m.group(0), init["command"][-1])
    subprocess.run([*init["command"][:-1], script], check=True, timeout=10)
    state = StateDir(where["state"])
    for name in TOKEN_FILES.values():
        assert stat.S_IMODE((where["state"] / name).stat().st_mode) == 0o600, name
        assert state.token(name) == tokens[name].strip(), f"{name}: the Secret's token was replaced"
    for name in ("client.der", "client_key.pem", "server.der"):
        assert stat.S_IMODE((where["pki"] / name).stat().st_mode) == 0o600, name
    assert sorted(p.name for p in where["pki"].iterdir()) == ["client.der", "client_key.pem", "server.der"]


def test_a_not_ready_line_still_takes_a_new_config():
    """A line whose PLC is down is not ready, by design (controller.health). With the StatefulSet's
    default OrderedReady, the controller waits for pod 0 to be Running and Ready before it does
    anything else, updates included (Kubernetes docs, StatefulSets, "Forced rollback"): the fix
    for a wrong PLC address in line.toml would never replace the pod that cannot reach the PLC.
    Parallel has no such wait; with one replica it changes nothing else (the pod's identity and
    claim are still never held by two pods)."""
    sts = RESOURCES["StatefulSet"]["spec"]
    assert sts["replicas"] == 1
    assert sts["podManagementPolicy"] == "Parallel"
    assert sts["updateStrategy"]["type"] == "RollingUpdate"
    assert "maxUnavailable" not in sts["updateStrategy"].get("rollingUpdate", {})  # one pod, one controller


def test_the_image_keeps_no_copy_of_the_wheels():
    """A `COPY --from=build /wheels` layer stays in the image after `rm -rf /wheels` in a later layer
    (every dependency's wheel twice: ~130 MB of numpy, scipy, scikit-learn, llvmlite, ...): the
    install reads them from a bind mount of the build stage instead."""
    steps = containerfile()
    final = steps[[i for i, (instruction, _) in enumerate(steps) if instruction == "FROM"][1]:]
    assert not [a for i, a in final if i in ("COPY", "ADD") and "/wheels" in a]
    (install,) = [a for i, a in final if i == "RUN" and "pip install" in a]
    assert install.startswith("--mount=type=bind,from=build,source=/wheels,target=/wheels ")


def test_a_liveness_kill_does_not_wait_the_whole_stop_grace():
    """The kubelet kills a pod that fails its liveness probe with SIGTERM, then SIGKILL after the
    grace period; a blocked event loop never handles the SIGTERM, so with the pod's 30 s the line
    was unwatched for the probes' 10-20 s plus 30 s. The liveness probe's own, shorter grace
    bounds that; a deliberate stop (delete, rollout, drain) keeps the pod's, at least the unit's
    TimeoutStopSec=20 (writes in flight finish, state is saved)."""
    unit = (ROOT / "configs" / "linesentry@.service").read_text()
    (stop_s,) = [int(line.split("=", 1)[1]) for line in unit.splitlines()
                 if line.startswith("TimeoutStopSec=")]
    assert POD["terminationGracePeriodSeconds"] >= stop_s
    assert CONTROLLER["livenessProbe"]["terminationGracePeriodSeconds"] <= 10


async def test_the_images_health_check_command_tells_alive_from_not():
    """The HEALTHCHECK's own command, run against a real API (its port swapped for a free one):
    exit 0 while /healthz is 200, 1 while it is 503 and 1 when nothing listens."""
    (health,) = [a for i, a in containerfile() if i == "HEALTHCHECK"]
    command = json.loads(health.split(" CMD ", 1)[1])
    port = CONTROLLER["ports"][0]["containerPort"]
    probes = Probes(time.monotonic, [])
    probes.started()
    server = ApiServer(create_app(object(), "t" * 32, probes=probes), "127.0.0.1", 0)
    await server.start()

    async def exit_code() -> int:
        args = [a.replace(f":{port}/", f":{server.port}/") for a in command]
        proc = await asyncio.create_subprocess_exec(*args, env={"PATH": os.environ["PATH"]})
        return await asyncio.wait_for(proc.wait(), 10)

    try:
        assert await exit_code() == 0
        probes.stopping()
        assert await exit_code() == 1
    finally:
        await server.stop()
    assert await exit_code() == 1
