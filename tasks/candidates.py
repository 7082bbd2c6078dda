"""Best-of-N: a unit's candidates run in parallel, one wins, its commit becomes the unit's branch.

Design: the unit stays ONE task of the implement stage (one ledger record, one verdict, one
reuse check, the same on a work pool). That task runs its candidates in threads, and the
scheduler takes one slot of the unit's class per candidate that runs at once
(`flotilla.candidates.width`: best_of, capped at the class's limit), so N candidates count N
against the class, here and, through the server's leases, across runs. Each candidate is a
`CandidateRunner`: the unit's own work loop (attempts, agent ⇄ tests, budgets) on its own
worktree and branch `flotilla/<feature>--<unit>+<k>`, with `FLOTILLA_CANDIDATE=<k>` in its
agent's environment, its logs, tests and outputs under `units/<unit>+<k>/` in the store and its
result in `units/<unit>/candidates/<k>.json`. Their spend is the unit's: the ledger record's
usage is the sum of the candidates', and the unit's budget caps them together.

`first_pass` stops the others (their agents are killed through run_process's `stop=`) as soon
as one passes; `all_pass_then_judge` waits for all and asks the judge command, or takes the
smallest diff. A resumed run keeps candidates that finished (passed or failed) with the same
fingerprint and runs only the others.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextvars
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from flotilla.candidates import (
    ALL_PASS_THEN_JUDGE,
    FIRST_PASS,
    candidate_branch,
    candidate_id,
    first_passed,
    passing,
    pick_note,
    read_judge_answer,
    smallest_diff,
    width,
)
from flotilla.environment import child_env
from flotilla.plan import NamedAgent, resource_limits
from flotilla.results import (
    CandidateOutcome,
    CandidateResult,
    FailureClass,
    UnitRecord,
    UnitStatus,
    utcnow,
)
from flotilla.usage import AttemptUsage, Usage
from tasks.agents import AgentInvocation, run_agent
from tasks.control import proposals_key
from tasks.processes import run_process
from tasks.reporting import note_unit
from tasks.spending import add_other_usage
from tasks.units import (
    AttemptFailed,
    UnitFailed,
    UnitJob,
    UnitRunner,
    run_store_for,
    workspace_for,
)


class CandidateStopped(AttemptFailed):
    """Another candidate won first: this one's agent was stopped (never retried)."""

    def __init__(self, message: str):
        super().__init__(FailureClass.ERROR, message)


def result_key(runs, unit_id: str, number: int) -> str:
    return f"{runs.unit_prefix(unit_id)}/candidates/{int(number)}.json"


class CandidateRunner(UnitRunner):
    """One candidate: the unit's work loop on the candidate's branch, reporting to its unit."""

    def __init__(self, job: UnitJob, number: int, named: NamedAgent, unit: BestOfRunner):
        self.candidate, self.parent, self.stopped = number, unit, False
        settings = job.settings.model_copy(
            update={"agent": named.agent, "agent_name": named.name, "best_of": 1, "candidates": []}
        )
        super().__init__(job.model_copy(update={"settings": settings}))
        self.store_id = candidate_id(self.unit.id, number)
        self.record.branch = candidate_branch(job.ctx.unit_branch(self.unit.id), number)

    def step(self, name: str) -> str:
        """`<unit> · <step> +<k>`: the UI tells the candidates' steps apart."""
        return f"{super().step(name)} +{self.candidate}"

    def _earlier_usage(self) -> list[AttemptUsage]:
        """What this candidate spent before a crash: kept, counted once."""
        earlier = self.parent.earlier.get(self.candidate or 0)
        return list(earlier.usage) if earlier is not None else []

    def save(self, **changes) -> None:
        for name, value in changes.items():
            setattr(self.record, name, value)
        self.parent.candidate_changed(self.result())

    def note(self, **changes) -> None:
        """The candidate's own record only: the unit's row shows the candidates' counts."""
        for name, value in changes.items():
            setattr(self.record, name, value)

    def result(self, outcome: CandidateOutcome = CandidateOutcome.RUNNING) -> CandidateResult:
        rec = self.record
        return CandidateResult(
            number=self.candidate or 0,
            agent_name=self.job.settings.agent_name,
            branch=rec.branch,
            outcome=outcome,
            attempts=rec.attempts,
            iterations=rec.iterations,
            start_commit=rec.start_commit,
            commit=rec.commit,
            tests=rec.tests,
            failure_class=rec.failure_class,
            error=rec.error,
            summary=rec.summary,
            log_path=rec.log_path,
            fingerprint=rec.fingerprint,
            usage=rec.usage,
        )

    def spent(self) -> Usage:
        return self.parent.total_usage()

    def stop_check(self) -> Callable[[], bool] | None:
        budget = self.budget.stop_check()

        def stop() -> bool:
            if self.parent.decided.is_set():
                self.stopped = True
                return True
            return budget is not None and budget()

        return stop

    def check_budget(self, attempt: int, iteration: int) -> None:
        if self.parent.decided.is_set():
            self.stopped = True
            raise CandidateStopped(f"stopped: candidate {self.parent.winner} passed first")
        super().check_budget(attempt, iteration)

    def stopped_by_budget(self, worktree: Path, failed: AttemptFailed) -> AttemptFailed:
        if self.stopped:
            return CandidateStopped(f"stopped: candidate {self.parent.winner} passed first")
        return super().stopped_by_budget(worktree, failed)

    def run(self) -> UnitRecord:  # type: ignore[override]
        """Never raises for a failed candidate: its result says what happened."""
        if self.parent.decided.is_set():
            self.stopped = True
            self.parent.candidate_changed(self.result(CandidateOutcome.STOPPED))
            return self.record
        try:
            super().run()
            outcome = CandidateOutcome.PASSED
        except UnitFailed:
            outcome = CandidateOutcome.STOPPED if self.stopped else CandidateOutcome.FAILED
            self.keep_work(outcome)
        result = self.result(outcome)
        if outcome == CandidateOutcome.PASSED:
            _, patch = self.workspace.diff(self.record.start_commit, self.record.commit)
            result.diff_lines = changed_lines(patch)
        self.parent.candidate_changed(result, final=True)
        return self.record

    def keep_work(self, outcome: CandidateOutcome) -> None:
        """A losing candidate's work stays on its branch, committed, for a reader to compare."""
        worktree = self.workspace.worktrees_dir / self.record.branch.rsplit("/", 1)[-1]
        if not worktree.is_dir():
            return
        try:
            sha = self.workspace.commit_all(
                worktree,
                f"{self.unit.display_title} (candidate {self.candidate}, {outcome.value})\n\n"
                f"{self.record.error}\n\nFlotilla-Unit: {self.unit.id}\n",
            )
            self.record.commit = sha
            self.workspace.remove_worktree(worktree)
        except Exception as exc:  # the verdict stands; only the kept copy is missing
            self.record.error += f" (its work could not be committed: {exc})"


def judge_prompt(title: str, task: str, passed: list[int]) -> str:
    """What a judge agent is asked: pick the best of the passing candidates, answer a number."""
    files = ", ".join(f"{n}.diff, {n}.tests.json, {n}.summary.md" for n in passed)
    return (
        f"# Choose the best implementation of: {title}\n\n{task or title}\n\n"
        f"Candidates {', '.join(map(str, passed))} each implemented this task and passed its "
        f"tests. Their diffs, test reports and summaries are in this directory "
        f"($FLOTILLA_CANDIDATES_DIR): {files}.\n\n"
        "Read them and pick the one a careful reviewer would merge: correct, clear, no more "
        "change than needed. Do not change any file. End your answer with the number of the "
        "candidate you choose, alone on the last line.\n"
    )


def changed_lines(patch: str) -> int:
    """Lines added plus lines removed in a unified diff."""
    return sum(
        1
        for line in patch.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++ ", "--- "))
    )


class BestOfRunner:
    """A unit with `best_of: N`: its candidates, their results, the pick, the unit's record."""

    def __init__(self, job: UnitJob):
        self.job, self.ctx, self.unit, self.settings = job, job.ctx, job.unit, job.settings
        self.runs = run_store_for(job.ctx)
        self.workspace = workspace_for(job.ctx)
        self.record = UnitRecord(
            unit_id=self.unit.id,
            fingerprint=job.fingerprint,
            branch=job.ctx.unit_branch(self.unit.id),
            base_commit=job.base_commit,
        )
        self.lock = threading.Lock()
        self.decided = threading.Event()  # first_pass: a candidate passed; stop the others
        self.winner: int | None = None
        self.earlier = self._earlier_results()
        self.results: dict[int, CandidateResult] = dict(self.earlier)
        self.finish_order: list[CandidateResult] = []

    # -- the candidates' results -----------------------------------------------------------

    def _earlier_results(self) -> dict[int, CandidateResult]:
        found: dict[int, CandidateResult] = {}
        for number in range(1, self.settings.best_of + 1):
            try:
                found[number] = self.runs.store.read_model(
                    result_key(self.runs, self.unit.id, number), CandidateResult
                )
            except KeyError:
                continue
        return found

    def kept(self, result: CandidateResult) -> bool:
        """A candidate that finished before this run of the unit was cut off (a crash, a kill),
        whose work is still as it left it. A unit that failed runs all its candidates again."""
        if result.fingerprint != self.job.fingerprint:
            return False
        if result.outcome == CandidateOutcome.FAILED:
            return True
        return (
            result.outcome == CandidateOutcome.PASSED
            and self.workspace.branch_sha(result.branch) == result.commit
        )

    def total_usage(self) -> Usage:
        with self.lock:
            return Usage.total(r.total_usage for r in self.results.values())

    def candidate_changed(self, result: CandidateResult, final: bool = False) -> None:
        with self.lock:
            self.results[result.number] = result
            self.runs.store.write_json(result_key(self.runs, self.unit.id, result.number), result)
            if final:
                self.finish_order.append(result)
                if (
                    self.settings.pick == FIRST_PASS
                    and result.outcome == CandidateOutcome.PASSED
                    and not self.decided.is_set()
                ):
                    self.winner = result.number
                    self.decided.set()
            self._save_locked(step=self._step_text())

    def _step_text(self) -> str:
        counts: dict[str, int] = {}
        for result in self.results.values():
            counts[result.outcome.value] = counts.get(result.outcome.value, 0) + 1
        done = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
        return f"{self.settings.best_of} candidates: {done}"

    def _save_locked(self, **changes) -> None:
        changes.setdefault(
            "usage",
            [
                AttemptUsage(attempt=r.number, usage=r.total_usage)
                for r in sorted(self.results.values(), key=lambda r: r.number)
            ],
        )
        changes.setdefault("candidates", sorted(self.results.values(), key=lambda r: r.number))
        # per candidate, as a unit's: the most any candidate used (their spend is all counted)
        changes.setdefault("attempts", max((r.attempts for r in self.results.values()), default=0))
        changes.setdefault(
            "iterations", max((r.iterations for r in self.results.values()), default=0)
        )
        for name, value in changes.items():
            setattr(self.record, name, value)
        self.runs.write_record(self.record)
        note_unit(self.ctx.run_key, self.record)

    def save(self, **changes) -> None:
        with self.lock:
            self._save_locked(**changes)

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> UnitRecord:
        started = time.monotonic()
        previous = self.runs.read_record(self.unit.id)
        resumed = previous is not None and not previous.status.is_final  # cut off mid-way
        self.save(status=UnitStatus.RUNNING, started_at=utcnow(), step="candidates")
        kept = {n: r for n, r in self.earlier.items() if resumed and self.kept(r)}
        self.results = dict(kept) | {n: r for n, r in self.earlier.items() if n not in kept}
        self.finish_order = sorted(kept.values(), key=lambda r: r.number)
        if self.settings.pick == FIRST_PASS and (won := first_passed(self.finish_order)):
            self.winner = won
            self.decided.set()
        todo = [n for n in range(1, self.settings.best_of + 1) if n not in kept]
        limit = resource_limits(self.ctx.request, self.ctx.workflow).get(self.settings.resources)
        with cf.ThreadPoolExecutor(
            max_workers=width(self.settings.best_of, limit),
            thread_name_prefix=f"flotilla-{self.unit.id}",
        ) as pool:
            futures = [
                # each thread runs in a copy of this task's context: its steps are its children
                pool.submit(contextvars.copy_context().run, self._run_candidate, number)
                for number in todo
            ]
            for future in cf.as_completed(futures):
                future.result()
        return self.decide(started)

    def _run_candidate(self, number: int) -> None:
        named = self.settings.candidates[number - 1]
        runner = CandidateRunner(self.job, number, named, self)
        shutil.rmtree(Path(self.ctx.workdir) / "units" / runner.store_id, ignore_errors=True)
        try:
            runner.run()
        except Exception as exc:  # a bug in one candidate must not lose the others' work
            result = runner.result(CandidateOutcome.FAILED)
            result.failure_class, result.error = FailureClass.ERROR, f"candidate crashed: {exc}"
            self.candidate_changed(result, final=True)

    def decide(self, started: float) -> UnitRecord:
        results = sorted(self.results.values(), key=lambda r: r.number)
        how = ""
        winner = self.winner if self.settings.pick == FIRST_PASS else None
        if self.settings.pick == ALL_PASS_THEN_JUDGE:
            winner, how = self.judged(results)
        note = pick_note(results, winner, how)
        finished = {"finished_at": utcnow(), "duration_s": time.monotonic() - started}
        if winner is None:
            failures = {r.failure_class for r in results}
            failure = failures.pop() if len(failures) == 1 else FailureClass.AGENT_FAILED
            self.save(
                status=UnitStatus.FAILED,
                step="failed",
                error=note,
                failure_class=failure or FailureClass.ERROR,
                pick_note=note,
                **finished,
            )
            raise UnitFailed(f"unit {self.unit.id!r} failed: {note}")
        self.adopt(self.results[winner])
        self.save(
            status=UnitStatus.SUCCEEDED, step="done", winner=winner, pick_note=note, **finished
        )
        return self.record

    def judged(self, results: list[CandidateResult]) -> tuple[int | None, str]:
        """all_pass_then_judge: the judge's choice among those that passed, else the smallest
        diff (also when the judge fails: the reason goes into the note)."""
        passed = [r.number for r in passing(results)]
        if len(passed) < 2:
            return (passed[0] if passed else None), ""
        if not self.settings.judge:
            return smallest_diff(results), "smallest diff"
        try:
            return self.ask_judge(results, passed), "chosen by the judge"
        except Exception as exc:  # a judge that fails leaves the choice to the diffs, and says so
            return smallest_diff(results), f"smallest diff: {exc}"

    def ask_judge(self, results: list[CandidateResult], passed: list[int]) -> int:
        folder = Path(self.ctx.workdir) / "units" / self.unit.id / "candidates"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for result in results:
            if result.outcome != CandidateOutcome.PASSED:
                continue
            _, patch = self.workspace.diff(result.start_commit, result.commit)
            (folder / f"{result.number}.diff").write_text(patch)
            (folder / f"{result.number}.tests.json").write_text(
                result.tests.model_dump_json(indent=1) if result.tests else "null"
            )
            (folder / f"{result.number}.summary.md").write_text(result.summary + "\n")
        (folder / "passed.txt").write_text("".join(f"{n}\n" for n in passed))
        log_file = folder.parent / "judge.log"
        try:
            if self.settings.judge in self.ctx.request.agents:
                return read_judge_answer(self.ask_judge_agent(folder, passed, log_file), passed)
            return read_judge_answer(self.run_judge_command(folder, log_file), passed)
        finally:
            if log_file.exists():
                key = f"{self.runs.unit_prefix(self.unit.id)}/judge.log"
                self.runs.store.upload_file(key, log_file)

    def run_judge_command(self, folder: Path, log_file: Path) -> str:
        done = run_process(
            str(self.settings.judge),
            cwd=folder,
            env=child_env(
                os.environ,
                pass_env=self.settings.pass_env,
                values=self.settings.env,
                contract={
                    "FLOTILLA_CANDIDATES_DIR": str(folder),
                    "FLOTILLA_UNIT_ID": self.unit.id,
                    "FLOTILLA_FEATURE_ID": self.ctx.feature_id,
                },
            ),
            timeout_s=self.settings.timeout_s,
            log_file=log_file,
        )
        if done.exit_code != 0:
            raise ValueError(f"the judge exited with {done.exit_code}")
        return done.output_tail

    def ask_judge_agent(self, folder: Path, passed: list[int], log_file: Path) -> str:
        """A judge from `agents:`, run in the candidates' folder with a prompt that says what is
        there; its answer (its summary, else its last output) names the winner. Its spend is
        the run's (`runs/<key>/spend/judge-<unit>.json`)."""
        name = str(self.settings.judge)
        prompt = folder.parent / "judge-prompt.md"
        prompt.write_text(judge_prompt(self.unit.display_title, self.unit.prompt, passed))
        answer_file = folder.parent / "judge-answer.md"
        answer_file.unlink(missing_ok=True)
        invocation = AgentInvocation(
            unit_id=self.unit.id,
            feature_id=self.ctx.feature_id,
            worktree=folder,
            prompt_file=prompt,
            inputs_dir=folder,
            outputs_dir=folder.parent / "judge-outputs",
            summary_file=answer_file,
            new_units_file=folder.parent / "judge-new-units.json",
            request_dir=Path(self.ctx.request_dir),
            log_file=log_file,
            timeout_s=self.settings.timeout_s,
            extra_env={"FLOTILLA_CANDIDATES_DIR": str(folder)},
            env=self.settings.env,
            pass_env=self.settings.pass_env,
            agent_name=name,
            usage_file=folder.parent / "judge-usage.json",
        )
        outcome = run_agent(self.ctx.request.agents[name], invocation)
        add_other_usage(self.runs, f"judge-{self.unit.id}", outcome.usage)
        if outcome.exit_code != 0:
            raise ValueError(f"the judge agent {name!r} exited with {outcome.exit_code}")
        if answer_file.is_file() and answer_file.read_text().strip():
            return answer_file.read_text()
        return outcome.output_tail

    def adopt(self, winner: CandidateResult) -> None:
        """The winner's work becomes the unit's: its branch, summary, tests, outputs, proposals."""
        self.workspace.set_branch(self.record.branch, winner.commit)
        store, runs = self.runs.store, self.runs
        source = candidate_id(self.unit.id, winner.number)
        for key in store.list(runs.outputs_prefix(source)):
            name = key.removeprefix(runs.outputs_prefix(source) + "/")
            store.write_bytes(runs.output_key(self.unit.id, name), store.read_bytes(key))
        for src, dst in (
            (runs.summary_key(source), runs.summary_key(self.unit.id)),
            (runs.unit_tests_key(source), runs.unit_tests_key(self.unit.id)),
            (proposals_key(runs, source), proposals_key(runs, self.unit.id)),
        ):
            if store.exists(src):
                store.write_bytes(dst, store.read_bytes(src))
            else:
                store.delete(dst)
        self.save(
            start_commit=winner.start_commit,
            commit=winner.commit,
            files_changed=self.workspace.changed_files(winner.start_commit, winner.commit),
            summary=winner.summary,
            tests=winner.tests,
            log_path=winner.log_path,
            outputs=sorted(
                k.rsplit("/", 1)[-1] for k in store.list(runs.outputs_prefix(self.unit.id))
            ),
        )  # run_unit's report shows the winner's diff
