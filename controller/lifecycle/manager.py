"""The model lifecycle of one line, off the hot path: the challenger started and stopped, the promotion
policy applied, the promoted model watched and rolled back (docs/models.md#at-the-edge).

The device shadow (controller.shadow) owns it: its `challenger` field starts and stops a challenge, its
`model_version` field promotes (the running challenger in place, else a model reloaded from its file),
and a decision taken here (an automatic promotion or rollback, a challenge ended by the policy) is
recorded back into the shadow as an accepted desired value by ``edge:promotion`` / ``edge:rollback``
(`record`), so the fleet's older desired value does not revert it and a restart applies it again.

The hot path only counts (controller.lifecycle.counters, stepped after the active step's writes were
issued); `run` looks at the counters every TICK_S and takes the decisions; the reported figures are
refreshed at most every [models] report_s (and at once when something happens), so the shadow's
reported document does not change on every row. Every step is a journal event (kind "model", source
"lifecycle").
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.errors import BadRequest, LinesentryError, ModelLoadError, NotSaved
from controller.lifecycle.counters import Challenger, Watch
from controller.lifecycle.policy import Policy, promotion_verdict, rollback_verdict, target_far
from controller.lifecycle.validate import check_model

if TYPE_CHECKING:
    from controller.config.models import ModelsSection
    from models.detector import StreamingDetector

log = logging.getLogger(__name__)

TICK_S = 0.25  # the decisions look at the counters this often
PROMOTION = "edge:promotion"
ROLLBACK = "edge:rollback"
Record = Callable[[str, str, str], Awaitable[None]]  # (field, value, by): an edge decision into the shadow


@dataclass
class Running:
    """The challenger (or the watched model) and what is known of it."""

    path: Path
    id: str
    since: float  # wall
    since_mono: float
    policy: Policy
    by: str
    verdict: str = ""  # a watch's, once it ended
    base: tuple[float, float] = (0.0, 0.0)  # a challenger's own line thresholds (on, off), unscaled
    margin: float = 1.0  # the margin applied to them now
    against: str = ""  # a challenger's: the id of the active model its figures are taken against
    extra: dict[str, Any] = field(default_factory=dict)  # a watch's last counters, once it ended


def already_active(name: str) -> str:
    return f"model {name[:12]} is the active model already: a model cannot challenge itself"


def model_id(det: StreamingDetector) -> str:
    return str(det.metadata.get("checksum") or "")


class ModelLifecycle:
    """Challenger, promotion, watch and rollback for one line (see the module docstring)."""

    def __init__(self, cfg: ModelsSection, *, ops: Any, models_dir: Path, record: Record,
                 state_file: Path | None = None) -> None:
        """`ops`: the line's controller.operations.Operations (not imported: it imports this package);
        `state_file`: where the previous model is kept across restarts (None: in memory only)."""
        self.cfg, self.ops, self.models_dir, self.record = cfg, ops, models_dir, record
        self.state_file = state_file
        self.pipeline = ops.pipeline
        self.clock = ops.health.clock
        self.lock = asyncio.Lock()  # one model change at a time (the shadow's worker and `run`)
        self.challenge: Running | None = None
        self.watched: Running | None = None
        self.previous: tuple[Path, str] | None = None  # the model the line ran before (path, id)
        self.last_challenge: dict[str, Any] | None = None  # how the last challenge ended
        self._saved_watch: tuple[str, float] | None = None  # (id, since) of a watch before a restart
        self._ended_watch: dict[str, Any] | None = None  # the report of a watch ended before a restart
        self._keeping: set[asyncio.Task] = set()  # copies of the previous model into models_dir
        self._report: dict[str, Any] = {}
        self._reported_at = -float("inf")

    # ------------------------------------------------------------------ the previous model
    def load(self) -> None:
        """The previous model saved by an earlier run, if its file is still there, and the watch that
        run had under way (resumed by `resume` once the saved desired model is loaded). At start."""
        if self.state_file is None:
            return
        try:
            saved = json.loads(self.state_file.read_text())
            prev, watch, ended = saved["previous"], saved.get("watch"), saved.get("ended_watch")
            path, model = (Path(prev["path"]), str(prev["id"])) if prev else (None, "")
            watch = (str(watch["id"]), float(watch["since"])) if watch else None
            if watch is not None and not math.isfinite(watch[1]):
                raise ValueError("a watch start that is not a time")
            if ended is not None and not (isinstance(ended.get("id"), str)
                                          and isinstance(ended.get("verdict"), str)):
                raise ValueError("ended_watch has no id and verdict")
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            log.warning("model lifecycle: %s unusable (%s): no previous model known", self.state_file,
                        type(exc).__name__)
            return
        self.previous = (path, model) if path is not None and path.is_file() else None
        self._saved_watch = watch
        self._ended_watch = ended  # how the last watch ended (a rollback: `model rollback` must not undo it)

    def resume(self) -> None:
        """Watch the active model again for what was left of its watch_s, if an earlier run was watching
        it (fresh counters: the rows before the restart are not known)."""
        saved, self._saved_watch = self._saved_watch, None
        path, active = self._active()
        if saved is None or path is None or saved[0] != active:
            return
        det = self.pipeline.detector
        policy = Policy.derive(self.cfg, target_far(det.metadata, det.spec))
        elapsed = max(0.0, self.clock.wall() - saved[1])
        if policy.watch_s <= 0 or elapsed >= policy.watch_s:
            return
        self.watched = Running(path, active, saved[1], self.clock.mono() - elapsed, policy, "restart")
        self.pipeline.watch = Watch()
        self._event(f"watch of model {active[:12]} resumed after a restart: {policy.watch_s - elapsed:.0f} s "
                    "left", "watch_resumed")

    async def _set_previous(self, previous: tuple[Path, str] | None) -> None:
        self.previous = previous
        await self._save_state()

    async def _save_state(self) -> None:
        """The previous model and the watch under way, for the next start (written atomically)."""
        if self.state_file is None:
            return
        from controller.atomicfile import write_atomic

        previous, running = self.previous, self.watched is not None and self.pipeline.watch is not None
        w = self.watched
        ended = self._watch_report() if w is not None and not running else None
        text = json.dumps({"previous": {"path": str(previous[0]), "id": previous[1]} if previous else None,
                           "watch": {"id": w.id, "since": w.since} if running and w is not None else None,
                           "ended_watch": ended})
        try:
            await asyncio.to_thread(write_atomic, self.state_file, text)
        except OSError as exc:  # the rollback still works in this run
            log.warning("model lifecycle: cannot save %s: %s", self.state_file, exc)

    # ------------------------------------------------------------------ reported
    def report(self) -> dict[str, Any]:
        """{"previous", "challenger", "watch"} for the shadow's state.model, refreshed at most every
        report_s (at once after a change: `_changed`)."""
        now = time.monotonic()
        if now - self._reported_at >= self.cfg.report_s:
            self._reported_at = now
            self._report = {"previous": self.previous[1] if self.previous else None,
                            "challenger": self._challenger_report(), "watch": self._watch_report()}
        return self._report

    def _changed(self) -> None:
        self._reported_at = -float("inf")

    def _challenger_report(self) -> dict[str, Any] | None:
        c, counters = self.challenge, self.pipeline.challenger
        if c is None or counters is None:
            return self.last_challenge
        return {"id": c.id, "version": c.path.stem, "running": True, "since": c.since, "by": c.by,
                **counters.figures(), "verdict": self._promotion_verdict(c, counters)}

    def _watch_report(self) -> dict[str, Any] | None:
        w = self.watched
        if w is None:
            return self._ended_watch
        counters: Watch | None = self.pipeline.watch
        rows = counters.rows if counters is not None else w.extra.get("rows", 0)
        rises = counters.rises if counters is not None else w.extra.get("rises", 0)
        return {"id": w.id, "since": w.since, "rows": rows, "rises": rises,
                "alarm_rate": rises / rows if rows else 0.0, "bound": w.policy.rollback_alarm_rate,
                "longest_on": counters.longest_on if counters is not None else w.extra.get("longest_on", 0),
                "verdict": w.verdict or "watching"}

    def _promotion_verdict(self, c: Running, counters: Challenger) -> str:
        return promotion_verdict(c.policy, rows=counters.rows, rises=counters.rises,
                                 agreement=counters.agreement, elapsed_s=self.clock.mono() - c.since_mono)

    # ------------------------------------------------------------------ queries
    def challenger_ref(self) -> dict[str, str] | None:
        """{"version": file stem, "id"} of the running challenger (None: none), as state.model names one."""
        c = self.challenge
        return None if c is None else {"version": c.path.stem, "id": c.id}

    def active_ref(self) -> dict[str, str | None]:
        """{"version", "id"} of the active model, as state.model names it."""
        path, active = self._active()
        return {"version": path.stem if path is not None else None, "id": active}

    def _active(self) -> tuple[Path | None, str]:
        det = self.pipeline.detector
        return self.ops.models.path, model_id(det) if det is not None else ""

    def _event(self, message: str, result: str, user: str = "", reason: str = "") -> None:
        self.ops.events.add("model", "lifecycle", message, user=user or "edge", reason=reason, result=result)
        log.info("model lifecycle: %s", message)
        self._changed()

    # ------------------------------------------------------------------ challenge
    async def start_challenge(self, path: Path, user: str, reason: str) -> None:
        """Load, validate and warm `path`, then step it beside the active model from the next row.
        ModelLoadError / BadRequest (the shadow's rejection, journaled there) when it must not run."""
        async with self.lock:
            det = await self.ops.models.load(path, warm_up=True)  # checksum, format, tags, spec; compiled
            check_model(det, self.ops.config, path)
            new_id, (_, active_id) = model_id(det), self._active()
            if new_id == active_id:
                raise BadRequest(already_active(new_id))
            if self.challenge is not None and self.challenge.id == new_id:
                return
            margin = self.pipeline.threshold_margin
            if det.threshold * margin >= 1.0:
                raise ModelLoadError(f"model {path}: its line threshold {det.threshold:.4g} times the "
                                     f"threshold margin {margin:g} in force reaches 1, so its line alarm "
                                     "could never fire")
            if self.challenge is not None:
                self._stop("replaced by " + new_id[:12], user, reason)
            from models.kernels import D_THRESHOLD_OFF, D_THRESHOLD_ON

            dp = det.model["decision_params"]
            policy = Policy.derive(self.cfg, target_far(det.metadata, det.spec))
            self.challenge = Running(path, new_id, self.clock.wall(), self.clock.mono(), policy, user,
                                     base=(float(dp[D_THRESHOLD_ON]), float(dp[D_THRESHOLD_OFF])),
                                     against=active_id)
            self._margin(self.challenge, det, margin)
            self.pipeline.challenger = Challenger(det, self.ops.line)
            self.last_challenge = None
            self._event(f"challenge started: model {new_id[:12]} ({path.name}) in shadow beside "
                        f"{active_id[:12] or 'the rules'} ({policy.mode} promotion: after "
                        f"{policy.challenge_s:g} s and {policy.min_rows} rows, rises below "
                        f"{policy.max_alarm_rate:g} a row, agreement at least {policy.min_agreement:g})",
                        "challenge_started", user, reason)

    def stop_challenge(self, user: str, reason: str) -> None:
        if self.challenge is not None:
            self._stop("stopped", user, reason)

    def _restart_challenge(self, user: str = PROMOTION, reason: str = "") -> None:
        """Another model became active: the challenger's figures, taken against the old one, start over
        (a new `Running`: a decision judged on the old figures is dropped)."""
        c, counters = self.challenge, self.pipeline.challenger
        active = self._active()[1]
        if c is None or counters is None or c.against == active:
            return
        self.challenge = dataclasses.replace(c, since=self.clock.wall(), since_mono=self.clock.mono(),
                                             against=active)
        counters.retired = True
        self.pipeline.challenger = Challenger(counters.detector, self.ops.line)
        self._event(f"challenge of model {c.id[:12]} restarted against the new active model {active[:12]} "
                    f"(after {counters.rows} rows against {c.against[:12] or 'the rules'})",
                    "challenge_restarted", user, reason)

    def _stop(self, how: str, user: str, reason: str, result: str = "challenge_stopped") -> None:
        c, counters = self.challenge, self.pipeline.challenger
        figures = self._challenger_report() if c is not None and counters is not None else None
        if counters is not None:
            counters.retired = True
        self.pipeline.challenger = None
        if c is None:
            return
        self.challenge = None
        self.last_challenge = {**(figures or {"id": c.id}), "running": False, "verdict": how}
        rows = counters.rows if counters is not None else 0
        agreement = counters.agreement if counters is not None else 1.0
        self._event(f"challenge of model {c.id[:12]} {how} after {rows} rows (agreement {agreement:.4f})",
                    result, user, reason)

    @staticmethod
    def _margin(c: Running, det: StreamingDetector, margin: float) -> None:
        """The challenger's thresholds times the margin in force (from its own originals: the margin is
        applied in place, so the active model's saved ones cannot serve)."""
        from models.kernels import D_THRESHOLD_OFF, D_THRESHOLD_ON

        dp = det.model["decision_params"]
        dp[D_THRESHOLD_ON], dp[D_THRESHOLD_OFF] = c.base[0] * margin, c.base[1] * margin
        c.margin = margin

    # ------------------------------------------------------------------ promotion
    async def promote_challenger(self, user: str, reason: str, *, judged: Running | None = None) -> None:
        """The running challenger becomes the active model in place (its warm state, no second fetch);
        the previous one is kept, the new one watched. `judged`: an automatic promotion of that
        challenge, dropped if another one (or another active model) took its place meanwhile."""
        auto = judged is not None
        async with self.lock:
            c, counters = self.challenge, self.pipeline.challenger
            if auto and (c is not judged or self._active()[1] != judged.against):
                return
            if c is None or counters is None:
                raise BadRequest("no challenger is running")
            if counters.failed:
                raise BadRequest(f"challenger {c.id[:12]} failed ({counters.failed}): it is not promoted")
            det = counters.detector
            margin = self.pipeline.threshold_margin
            if det.threshold / c.margin * margin >= 1.0:
                raise ModelLoadError(f"model {c.path}: its line threshold times the threshold margin "
                                     f"{margin:g} in force reaches 1, so the line alarm could never fire")
            figures = self._challenger_report()
            self._margin(c, det, 1.0)  # unscaled: use_detector applies the margin and keeps these originals
            before = self._active()
            counters.retired = True  # a step still queued for it (a row with writes) must not touch it now
            self.pipeline.challenger = None
            self.challenge = None
            self.pipeline.use_detector(det)
            self.ops.models.path = c.path
            self.last_challenge = {**(figures or {}), "running": False, "verdict": "promoted"}
            who = "automatically (within the bounds)" if auto else f"by {user}"
            self._event(f"model {c.id[:12]} promoted {who} from challenger, in place, after "
                        f"{counters.rows} rows (agreement {counters.agreement:.4f}, rises {counters.rises} "
                        f"vs active {counters.active_rises})", "promoted", user, reason)
            await self._promoted(before, c.path, c.id, user)
        if auto:
            await self.record("model_version", c.id, PROMOTION)
        await self.record("challenger", "", PROMOTION)
        await self._persist()

    async def reload(self, path: Path, user: str, reason: str, *, again: bool = False) -> None:
        """A desired model_version that is not the challenger: reloaded from its file (every reload check);
        the model it names becomes watched, unless it is the previous one (a manual rollback)."""
        async with self.lock:
            before = self._active()
            await self.ops.reload_model(user, str(path), reason, role="engineer")
            _, new_id = self._active()
            if again or new_id == before[1]:
                return
            if self.challenge is not None and self.challenge.id == new_id:
                self._stop("ended: promoted from its file", user, reason)
            self._restart_challenge(user, reason)
            if self.previous is not None and new_id == self.previous[1]:
                self._end_watch("ended: rolled back by hand")
                await self._set_previous((before[0], before[1]) if before[0] is not None else None)
                self._event(f"model rolled back by {user} to {new_id[:12]} (from {before[1][:12]})",
                            "rollback_manual", user, reason)
                return
            self._event(f"model {new_id[:12]} promoted by {user} ({path.name})", "promoted", user, reason)
            await self._promoted(before, path, new_id, user)

    async def _promoted(self, before: tuple[Path | None, str], path: Path, new_id: str, user: str) -> None:
        """After a promotion: keep the previous artifact in models_dir (a rollback and a restart find it)
        and watch the new model for watch_s."""
        old_path, old_id = before
        self._end_watch("ended: another model promoted")
        if old_path is not None and old_id:
            await self._set_previous((old_path, old_id))
            task = asyncio.create_task(self._keep_previous(old_path, old_id), name="model-lifecycle:keep")
            self._keeping.add(task)  # in the background: a stalled disk must not hold up the shadow
            task.add_done_callback(self._keeping.discard)
        det = self.pipeline.detector
        policy = Policy.derive(self.cfg, target_far(det.metadata, det.spec))
        if policy.watch_s > 0:
            self.watched = Running(path, new_id, self.clock.wall(), self.clock.mono(), policy, user)
            self.pipeline.watch = Watch()
            self._event(f"watching model {new_id[:12]} for {policy.watch_s:g} s: rolled back to "
                        f"{old_id[:12] or '-'} if its rises exceed {policy.rollback_alarm_rate:g} a row or "
                        f"its line alarm stays on for {policy.stuck_rows} rows", "watch_started", user)
        await self._save_state()  # (also when no watch started: the one that ended is not resumed)

    async def _keep_previous(self, path: Path, model: str) -> None:
        """Copy the previous model into models_dir; from then on it is the rollback's (and a restart's)
        file, unless another model became the previous one meanwhile."""
        kept = await asyncio.to_thread(self._keep, path, model)
        if kept != path and self.previous == (path, model):
            await self._set_previous((kept, model))

    async def stop(self) -> None:
        """End the background copies still under way (their threads finish on their own)."""
        for task in list(self._keeping):
            task.cancel()
        await asyncio.gather(*self._keeping, return_exceptions=True)

    def _keep(self, path: Path, model: str) -> Path:
        """`path` as <id>.npz in models_dir (a copy, unless it is there already)."""
        from controller.atomicfile import copy_atomic

        kept = self.models_dir / f"{model}.npz"
        if path.parent == self.models_dir or kept.is_file():
            return path
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
            copy_atomic(path, kept)
        except OSError as exc:  # the rollback still has the original path; a restart may not
            log.warning("model lifecycle: cannot keep %s in %s: %s", path, self.models_dir, exc)
            return path
        return kept

    def _end_watch(self, verdict: str) -> None:
        w, counters = self.watched, self.pipeline.watch
        self.pipeline.watch = None
        if w is None:
            return
        if counters is not None:
            w.extra = {"rows": counters.rows, "rises": counters.rises, "longest_on": counters.longest_on}
        w.verdict = verdict
        self._changed()

    # ------------------------------------------------------------------ rollback
    async def rollback(self, why: str, watched: Running) -> None:
        """Back to the previous model, reloaded fresh from its file (no state or margin of the bad one).
        Dropped when `watched` (the watch the verdict was taken on) is no longer the watch under way or
        its model no longer the active one (another promotion or reload came first)."""
        async with self.lock:
            w = self.watched
            if w is not watched or self.pipeline.watch is None or self._active()[1] != w.id:
                return
            if self.previous is None:
                self._end_watch(f"misbehaves ({why}), but no previous model to roll back to: kept")
                await self._save_state()
                self._event(f"model {w.id[:12]} misbehaves ({why}) and there is no previous model to roll "
                            "back to: it stays active; promote another model", "rollback_failed", ROLLBACK)
                return
            path, old_id = self.previous
            try:
                await self.ops.reload_model(ROLLBACK, str(path), f"automatic rollback: {why}",
                                            role="engineer", validate=False)
            except LinesentryError as exc:
                self._end_watch(f"rollback failed: {exc}")
                await self._save_state()
                self._event(f"automatic rollback of model {w.id[:12]} to {old_id[:12]} failed: {exc}",
                            "rollback_failed", ROLLBACK)
                return
            self._end_watch(f"rolled back: {why}")
            await self._set_previous(None)  # the model that misbehaved is no rollback target
            self._restart_challenge(ROLLBACK)
            self._event(f"model {w.id[:12]} rolled back automatically to {old_id[:12]}: {why}",
                        "rollback_automatic", ROLLBACK)
        await self.record("model_version", old_id, ROLLBACK)
        await self._persist()

    # ------------------------------------------------------------------ the decisions
    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self.decide()
            except Exception:  # a bug costs this round's decision, not the lifecycle
                log.exception("model lifecycle: the decision round failed")

    async def decide(self) -> None:
        """One round: the challenge (failed, pushed past 1 by the margin, judged by the auto policy) and
        the watch (another model loaded meanwhile, rolled back, or kept)."""
        await self._decide_challenge()
        w, watch = self.watched, self.pipeline.watch
        if w is None or watch is None:
            return
        if self._active()[1] != w.id:  # reloaded by other means (the local API): not this watch's model
            self._end_watch("ended: another model was loaded")
            await self._save_state()
            self._event(f"watch of model {w.id[:12]} ended: another model was loaded", "watch_ended")
            return
        why = rollback_verdict(w.policy, rows=watch.rows, rises=watch.rises, on_run=watch.on_run)
        over = self.clock.mono() - w.since_mono >= w.policy.watch_s
        if not why and over and watch.alarm_rows * 2 > watch.rows:  # episodes shorter than stuck_rows
            why = f"line alarm on for {watch.alarm_rows} of the {watch.rows} rows of its watch (over half)"
        if why:
            await self.rollback(why, w)
        elif over:
            self._end_watch("kept")
            await self._save_state()
            self._event(f"model {w.id[:12]} kept: {watch.rises} rises in {watch.rows} rows over the "
                        f"{w.policy.watch_s:g} s watch", "watch_kept")

    async def _decide_challenge(self) -> None:
        c, counters = self.challenge, self.pipeline.challenger
        if c is None or counters is None:
            return
        self._restart_challenge()  # another model became active by other means: start the figures over
        c, counters = self.challenge, self.pipeline.challenger
        margin = self.pipeline.threshold_margin
        end = ""
        if counters.failed:
            end, result = f"ended: its step failed ({counters.failed})", "challenge_failed"
        elif c.base[0] * margin >= 1.0:
            end, result = (f"ended: the threshold margin {margin:g} puts its line threshold at "
                           f"{c.base[0] * margin:.4g}: its alarm could never fire", "challenge_refused")
        elif c.margin != margin:
            self._margin(c, counters.detector, margin)
        if not end and c.policy.mode == "auto":
            verdict = self._promotion_verdict(c, counters)
            if verdict == "within bounds":
                try:
                    await self.promote_challenger(PROMOTION, "automatic promotion: within the bounds",
                                                  judged=c)
                except LinesentryError as exc:
                    end, result = f"not promoted: {exc}", "challenge_refused"
            elif verdict.startswith("outside"):
                end, result = f"not promoted: {verdict}", "challenge_refused"
        if not end:
            return
        async with self.lock:
            if self.challenge is not c:
                return  # replaced meanwhile: the verdict was on another challenge
            self._stop(end, PROMOTION, "", result)
        await self.record("challenger", "", PROMOTION)

    async def _persist(self) -> None:
        try:
            await self.ops.persist()
        except NotSaved as exc:
            log.warning("model lifecycle: %s", exc)
