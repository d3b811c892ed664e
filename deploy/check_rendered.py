"""Render each overlay with `kubectl kustomize` and check it as `kubectl apply -k` would send it.

    make deploy-check        # needs kubectl >= 1.27 (kustomize v5) on PATH

Not part of `make test`: kubectl is not in Debian 12 (its kubernetes-client 1.20 predates the
kustomize fields these overlays use) nor on PyPI, and the suite installs only from the package
registries. The base manifests are validated in the suite (tests/test_deploy_manifests.py).
Checks: strictly valid Kubernetes, every resource in the namespace, the name prefix applied to each
reference (a required Secret or ConfigMap that is not rendered leaves the pod stuck in
ContainerCreating), the selectors on the instance's labels.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import kubernetes_validate
import yaml

DEPLOY = Path(__file__).resolve().parent
KUBERNETES = "1.32.0"  # as tests/test_deploy_manifests.py


def check(overlay: Path, tmp_path: Path) -> None:
    deploy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, deploy)
    copy = deploy / "overlays" / overlay.name
    kustomization = yaml.safe_load((copy / "kustomization.yaml").read_text())
    for generator in kustomization.get("secretGenerator", []):
        for f in generator.get("files", []):
            (copy / f).parent.mkdir(exist_ok=True)
            (copy / f).write_text(secrets.token_urlsafe(32))
        for f in generator.get("envs", []):
            (copy / f).write_text("LINESENTRY_STAND_IN=x\n")
    rendered = subprocess.run(["kubectl", "kustomize", str(copy)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    for d in docs:
        kubernetes_validate.validate(d, KUBERNETES, strict=True)
        assert d["metadata"]["namespace"] == kustomization["namespace"], d["kind"]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    wanted = [("ConfigMap", v["configMap"]["name"], v["configMap"].get("optional", False))
              for v in pod["volumes"] if "configMap" in v]
    wanted += [("Secret", v["secret"]["secretName"], v["secret"].get("optional", False))
               for v in pod["volumes"] if "secret" in v]
    wanted += [("Secret", e["secretRef"]["name"], e["secretRef"].get("optional", False))
               for c in pod["containers"] for e in c.get("envFrom", [])]
    for kind, name, optional in wanted:
        assert (kind, name) in names or optional, f"{kind} {name} is not rendered"
    for kind, name, _ in wanted:
        assert name.startswith(kustomization["namePrefix"]), f"{kind} {name}: another line's, or nobody's"
    (service,) = [d for d in docs if d["kind"] == "Service"]
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/instance"] == overlay.name
    (pdb,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    for selector in (sts["spec"]["selector"]["matchLabels"], service["spec"]["selector"],
                     pdb["spec"]["selector"]["matchLabels"]):
        assert selector.get("app.kubernetes.io/instance") == overlay.name
        assert selector.items() <= labels.items()


def main() -> int:
    if shutil.which("kubectl") is None:
        print("kubectl not found: install kubectl >= 1.27 (kustomize v5) to render the overlays",
              file=sys.stderr)
        return 2
    overlays = sorted(p for p in (DEPLOY / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
    for overlay in overlays:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                check(overlay, Path(tmp))
            except AssertionError as exc:
                print(f"{overlay.name}: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
                return 1
        print(f"{overlay.name}: rendered, valid for Kubernetes {KUBERNETES}, references resolve")
    return 0


if __name__ == "__main__":
    sys.exit(main())
