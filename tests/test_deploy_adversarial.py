"""The deployment as Kubernetes exercises it, beyond what kubernetes-validate --strict checks: the
names the cluster DNS gives a line's Service and pod reach the API (Host header check), the
kubelet's probe (Host: the pod's IP) passes it, and the references inside the pod spec (volumes,
probe ports, selectors, the init container's copies) point at things that exist. docs/fleet.md.
"""

from __future__ import annotations

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from controller.api import create_app
from controller.config import load_config
from controller.health import Probes
from tests.test_deploy_manifests import ALL_CONTAINERS, CONTROLLER, OVERLAYS, POD, RESOURCES

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
