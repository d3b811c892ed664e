"""`linesentry model push/list/promote/rollback`: the registry (controller/registry.py) and the
rollout of a model to one line or many through the device shadow (controller/fleet_client.py).

Registered on cli.py's `model` group by `register`; this module imports only typer at import time
(the CLI's startup cost), the registry, numpy and paho inside the commands. Errors are raised as
`LinesentryError`s: cli.py turns them into one line and its exit code (2 a user mistake, 1 runtime).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from controller.errors import LinesentryError

REGISTRY_ENV = "LINESENTRY_REGISTRY"
REGISTRY_HELP = f"the model registry directory; default ${REGISTRY_ENV}"
LINE_HELP = "SITE/LINE to deploy to (repeat for many lines)"


class NotReached(LinesentryError):
    """--wait ended with a line that did not report the model (exit 1)."""

    status = 504


@dataclass
class _Target:
    label: str  # SITE/LINE
    site: str
    line: str
    prefix: str
    id: str = ""
    version: int = 0
    previous: str | None = None
    result: str = ""  # "", "ok", "rejected: ..."
    elapsed: float = 0.0


def _registry(path: Path | None) -> Path:
    from controller.registry import RegistryError

    if path is None or not str(path):
        raise RegistryError(f"no model registry: pass --registry DIR or set {REGISTRY_ENV}")
    return path


def _when(t: Any) -> str:
    try:
        return dt.datetime.fromtimestamp(float(t)).isoformat(sep=" ", timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def _user(by: str | None) -> str:
    from controller.registry import RegistryError, default_user

    who = by or default_user()
    if not 1 <= len(who) <= 64 or not who.isprintable():
        raise RegistryError("--by must be 1 to 64 printable characters")
    return who


def _targets(lines: list[str], prefix: str) -> list[_Target]:
    from controller.fleet_client import topic_prefix
    from controller.registry import RegistryError, parse_line

    out, seen = [], set()
    for text in lines:
        site, line = parse_line(text)
        if (site, line) in seen:
            raise RegistryError(f"--line {text} is given twice")
        seen.add((site, line))
        out.append(_Target(f"{site}/{line}", site, line, topic_prefix(prefix, site, line)))
    return out


def _state(doc: Any) -> dict:
    return doc.get("state") if isinstance(doc, dict) and isinstance(doc.get("state"), dict) else {}


def _running(doc: Any, field: str) -> str | None:
    """The id the reported document shows for `field`: the active model (state.model), or the
    challenger running beside it (state.model.challenger, while `running`)."""
    part = _state(doc).get("model")
    if field == "challenger":
        part = part.get("challenger") if isinstance(part, dict) else None
        part = part if isinstance(part, dict) and part.get("running") is True else None
    value = part.get("id") if isinstance(part, dict) else None
    return value if isinstance(value, str) else None


def _seen_versions(doc: Any, desired: Any, field: str) -> list[Any]:
    seen = []
    if isinstance(desired, dict):
        seen.append(desired.get("version"))
    if isinstance(doc, dict):
        for part in ("desired", "rejected"):
            entry = doc.get(part, {}).get(field) if isinstance(doc.get(part), dict) else None
            if isinstance(entry, dict):
                seen.append(entry.get("version"))
    return seen


def _verdict(doc: Any, field: str, target: _Target) -> str:
    """"ok" when the report shows the model, "rejected: why" when it refused our version, else ""."""
    rejected = doc.get("rejected") if isinstance(doc, dict) else None
    entry = rejected.get(field) if isinstance(rejected, dict) else None
    if isinstance(entry, dict) and entry.get("version") == target.version:
        return f"rejected: {entry.get('reason') or 'no reason given'}"
    return "ok" if _running(doc, field) == target.id else ""


def _deploy(targets: list[_Target], field: str, action: str, *, broker: str, tls_ca: str | None,
            username: str | None, by: str, wait: float | None, registry: Path | None,
            choose: Callable[[_Target, Any], str], say: Callable[[str], None]) -> None:
    """Publish desired `field` to every target (the id `choose` picks from its report), log each
    deployment, and with `wait` follow the reports until each line shows it or refused it."""
    from controller.fleet_client import FleetClient, next_version
    from controller.registry import log_deployment

    with FleetClient(broker, tls_ca=tls_ca, username=username) as client:
        topics = [f"{t.prefix}/reported" for t in targets] + [f"{t.prefix}/desired/{field}" for t in targets]
        retained = client.read_retained(topics)
        reports = {t.prefix: retained.get(f"{t.prefix}/reported") for t in targets}
        for t in targets:
            t.id = choose(t, reports[t.prefix])
            t.previous = _running(reports[t.prefix], "model_version")
        for t in targets:
            t.version = next_version(_seen_versions(reports[t.prefix], retained.get(
                f"{t.prefix}/desired/{field}"), field))
            client.publish_retained(f"{t.prefix}/desired/{field}", {"value": t.id, "version": t.version,
                                                                    "by": by})
            started = time.monotonic()
            t.elapsed = started
            if registry is not None:
                entry = {"at": time.time(), "by": by, "action": action, "id": t.id, "version": t.version}
                if t.previous:
                    entry["previous"] = t.previous
                log_deployment(registry, t.site, t.line, entry)
            say(f"{t.label}: desired {field} = {t.id[:16]} (version {t.version}) published")
        if wait is None:
            return
        deadline = time.monotonic() + wait
        by_topic = {f"{t.prefix}/reported": t for t in targets}
        for t in targets:  # a line that runs the model already (re-promotion) is done
            if _verdict(reports[t.prefix], field, t) == "ok":
                t.result, t.elapsed = "ok", time.monotonic() - t.elapsed
        while any(not t.result for t in targets) and time.monotonic() < deadline:
            message = client.next_message(deadline - time.monotonic())
            if message is None:
                continue
            topic, doc = message
            t = by_topic.get(topic)
            if t is None or t.result:
                continue
            reports[t.prefix] = doc
            verdict = _verdict(doc, field, t)
            if verdict:
                t.result, t.elapsed = verdict, time.monotonic() - t.elapsed
    failed = 0
    for t in targets:
        if t.result == "ok":
            say(f"{t.label}: reports {t.id[:16]} after {t.elapsed:.2f} s")
            continue
        failed += 1
        if t.result:
            say(f"{t.label}: {t.result} (after {t.elapsed:.2f} s)")
        else:
            shows = _running(reports[t.prefix], field)
            say(f"{t.label}: not reached within {wait:g} s (reports {shows[:16] if shows else 'nothing'})")
    if failed:
        raise NotReached(f"{failed} of {len(targets)} line(s) did not take the model: see the lines above")


def register(group: typer.Typer, *, say: Callable[[str], None], print_table: Callable[..., None]) -> None:
    """Add push, list, promote and rollback to the `model` command group."""

    @group.command("push")
    def push(file: Path = typer.Argument(..., help="the model artifact (.npz) to add", show_default=False),
             registry: Path = typer.Option(None, "--registry", envvar=REGISTRY_ENV, help=REGISTRY_HELP),
             name: str = typer.Option(None, "--name", help="a name to show (default: the file name)"),
             note: str = typer.Option("", "--note", help="a note to keep with it"),
             by: str = typer.Option(None, "--by", help="who pushes (default: $USER)")) -> None:
        """Add a model to the registry under its checksum; prints its id (pushing it again is a no-op)."""
        from controller.registry import push as do_push

        record, added = do_push(_registry(registry), file, name=name, note=note, by=_user(by))
        say(record["id"])
        if not added:
            say(f"(already in the registry since {_when(record.get('pushed_at'))})")

    @group.command("list")
    def list_(registry: Path = typer.Option(None, "--registry", envvar=REGISTRY_ENV, help=REGISTRY_HELP),
              line: str = typer.Option(None, "--line", help="SITE/LINE: its deployment history instead")
              ) -> None:
        """The models in the registry, oldest first; with --line, what was deployed to that line."""
        from controller import registry as reg

        path = _registry(registry)
        if line is not None:
            site, name = reg.parse_line(line)
            rows = [[_when(e.get("at")), e["action"], e["id"][:16], str(e.get("previous") or "-")[:16],
                     str(e.get("version", "-")), str(e.get("by", "-"))]
                    for e in reg.read_deployments(path, site, name)]
            print_table(("at", "action", "id", "previous", "version", "by"), rows,
                        title=f"deployments of {site}/{name}")
            return
        rows = []
        for r in reg.list_models(path):
            thr = r.get("threshold_on")
            rows.append([r["id"][:16], str(r.get("name", "?")), _when(r.get("pushed_at")),
                         str(r.get("pushed_by", "?")), str(len(r.get("tags") or [])),
                         f"{thr:.4f}" if isinstance(thr, int | float) else "-", str(r.get("note") or "")])
        print_table(("id", "name", "pushed", "by", "tags", "threshold", "note"), rows)

    broker_opt = typer.Option(..., "--broker",
                              help="the fleet's MQTT broker, HOST:PORT (mqtts://HOST:PORT: TLS)")
    prefix_opt = typer.Option("linesentry/{site}/{line}/shadow", "--prefix",
                              help="shadow topic prefix template ({site}, {line})")
    wait_opt = typer.Option(None, "--wait", min=0.0, help="wait up to SECONDS for every line to report it")
    ca_opt = typer.Option(None, "--tls-ca", help="CA file of the broker's certificate (turns TLS on)")
    user_opt = typer.Option(None, "--username", help="MQTT user (password: $LINESENTRY_MQTT_PASSWORD)")

    @group.command("promote")
    def promote(model_id: str = typer.Argument(..., metavar="ID", show_default=False,
                                               help="model id or a unique prefix (12+ hex digits)"),
                line: list[str] = typer.Option(..., "--line", help=LINE_HELP),
                challenge: bool = typer.Option(False, "--challenge", help="run it as the challenger in "
                                               "shadow beside the active model instead"),
                broker: str = broker_opt, prefix: str = prefix_opt, wait: float = wait_opt,
                by: str = typer.Option(None, "--by", help="who promotes (default: $USER)"),
                tls_ca: str = ca_opt, username: str = user_opt,
                registry: Path = typer.Option(None, "--registry", envvar=REGISTRY_ENV, help=REGISTRY_HELP)
                ) -> None:
        """Make a registry model the one each line runs (or, with --challenge, its challenger in shadow):
        the desired model_version (challenger) in the line's device shadow, logged in the registry's
        deployments. Promoting the running challenger promotes it in place."""
        from controller.registry import artifact_path

        path = _registry(registry)
        full = artifact_path(path, model_id).stem  # known, not ambiguous, intact: before any publish
        targets = _targets(line, prefix)
        field = "challenger" if challenge else "model_version"
        _deploy(targets, field, "challenge" if challenge else "promote", broker=broker, tls_ca=tls_ca,
                username=username, by=_user(by), wait=wait, registry=path, choose=lambda t, doc: full,
                say=say)

    @group.command("rollback")
    def rollback(line: list[str] = typer.Option(..., "--line", help=LINE_HELP),
                 broker: str = broker_opt, prefix: str = prefix_opt, wait: float = wait_opt,
                 by: str = typer.Option(None, "--by", help="who rolls back (default: $USER)"),
                 tls_ca: str = ca_opt, username: str = user_opt,
                 registry: Path = typer.Option(None, "--registry", envvar=REGISTRY_ENV,
                                               help=REGISTRY_HELP + " (its deployments log: used when "
                                                    "the line does not report a previous model)")) -> None:
        """Put each line back on the model it ran before: the reported model.previous, else the
        registry's deployments log."""
        from controller.registry import RegistryError, is_model_id, read_deployments, rollback_target

        def choose(t: _Target, doc: Any) -> str:
            model = _state(doc).get("model")
            previous = model.get("previous") if isinstance(model, dict) else None
            if isinstance(previous, str) and is_model_id(previous):
                return previous
            watch = model.get("watch") if isinstance(model, dict) else None
            if registry is not None and str(registry):
                log = read_deployments(registry, t.site, t.line)
                found = rollback_target(log, _running(doc, "model_version"))
                if found and isinstance(watch, dict) and watch.get("id") == found and str(
                        watch.get("verdict", "")).startswith("rolled back"):
                    raise RegistryError(f"{t.label}: the line rolled back from {found[:16]} by itself "
                                        f"({watch['verdict']}); not sending it again: promote the model "
                                        "you want with `linesentry model promote ID`")
                if found:
                    return found
            raise RegistryError(f"{t.label}: no previous model known (the line reports none and "
                                f"{'the deployments log has none' if registry else 'no --registry given'}): "
                                "promote the model you want with `linesentry model promote ID`")

        _deploy(_targets(line, prefix), "model_version", "rollback", broker=broker, tls_ca=tls_ca,
                username=username, by=_user(by), wait=wait,
                registry=registry if registry is not None and str(registry) else None, choose=choose, say=say)
