"""The work loop of one unit: worktree, inputs, agent ⇄ tests, commit, outputs.

`run_unit` is the Prefect task the implement stage submits once per unit (a unit with
`best_of: N` runs its candidates inside it: tasks/candidates.py). Each agent call and each test
run is a nested task (`<unit> · agent #2`, `<unit> · tests`), so the UI shows where every agent
is; the quick plumbing around them (worktree, inputs, commit, outputs) runs inside the unit's
task, timed in the ledger (`steps_s`), because a task run costs the Prefect server more than the
step itself. Attempts, backoff and rate-limit waits happen here,
because a rate limit must cost no attempt and Prefect's own retries cannot tell the difference.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import tags, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TagsContext, TaskRunContext
from prefect.utilities.annotations import quote
from pydantic import BaseModel, Field

from flotilla.errors import FlotillaError
from flotilla.estimate import prompt_size
from flotilla.plan import UnitSettings
from flotilla.redaction import redact
from flotilla.results import FailureClass, TestReport, UnitRecord, UnitStatus, utcnow
from flotilla.runs import RunContext
from flotilla.spec import UnitSpec
from flotilla.usage import AttemptUsage, Usage
from tasks.agents import AgentGaveUp, AgentInvocation, AgentOutcome, run_agent_until_done
from tasks.checks import run_tests, test_env
from tasks.control import proposals_key
from tasks.naming import retire_tag_queues, unit_tag, unit_task_name
from tasks.reporting import note_unit, publish_unit_report
from tasks.spending import UnitBudget
from tasks.stage_inputs import RunRef
from tasks.stats import record_duration, record_usage
from tasks.store import ArtifactStore, RunStore
from tasks.unit_diff import unit_diff_markdown
from tasks.workspace import Workspace, identity_env

TAIL_FOR_PROMPT = 80


class UnitJob(BaseModel):
    """One unit's input: the run (by reference: tasks/stage_inputs.py), the unit, its resolved
    settings, where it starts from."""

    run: RunRef
    unit: UnitSpec
    settings: UnitSettings
    base_commit: str
    dep_branches: list[str]
    covered_branches: list[str] = Field(
        default_factory=list,
        description="dependency branches another dependency's branch holds already",
    )
    fingerprint: str

    @property
    def ctx(self) -> RunContext:
        return self.run.ctx


class UnitFailed(FlotillaError):
    """Raised after the ledger says `failed`, so the Prefect task run ends Failed too. A
    FlotillaError: its message says it all, and the console shows no traceback for it."""


class AttemptFailed(FlotillaError):
    """One attempt's failure, with its class (the retry policy decides on the class)."""

    def __init__(self, failure: FailureClass, message: str):
        super().__init__(message)
        self.failure = failure


def workspace_for(ctx: RunContext) -> Workspace:
    return Workspace(
        Path(ctx.workdir),
        ctx.repo,
        ctx.base,
        identity_env(ctx.author_name, ctx.author_email),
    )


def run_store_for(ctx: RunContext) -> RunStore:
    return RunStore(ArtifactStore(ctx.store_url), ctx.run_key)


@task(name="run-unit", persist_result=False, cache_policy=NO_CACHE)
def run_unit(job: UnitJob) -> UnitRecord:
    if job.settings.best_of > 1:
        from tasks.candidates import BestOfRunner  # it builds on UnitRunner, below

        runner: UnitRunner | BestOfRunner = BestOfRunner(job)
    else:
        runner = UnitRunner(job)
    own = TaskRunContext.get()
    if own is not None:  # this task run holds its slot: its tags' queue has served it
        retire_tag_queues(own.task_run.tags)
    try:
        with tags(unit_tag(job.unit.id)):  # its step task runs are the unit's too
            try:
                return runner.run()
            finally:
                retire_tag_queues(TagsContext.get().current_tags)  # the steps' tags
    finally:
        diff = unit_diff_markdown(job.ctx, runner.record, runner.workspace)
        publish_unit_report(job.ctx, job.unit, runner.record, diff)


class UnitRunner:
    """Holds one unit's state across its attempts and keeps the ledger up to date."""

    candidate: int | None = None  # best-of-N: this runner's candidate number (tasks/candidates)

    def __init__(self, job: UnitJob):
        self.job = job
        self.unit = job.unit
        self.ctx = job.ctx
        self.store_id = self.unit.id  # where its logs, tests and outputs go in the store
        self.runs = run_store_for(job.ctx)
        self.workspace = workspace_for(job.ctx)
        self.record = UnitRecord(
            unit_id=self.unit.id,
            fingerprint=job.fingerprint,
            branch=job.ctx.unit_branch(self.unit.id),
            base_commit=job.base_commit,
            usage=self._earlier_usage(),
        )
        self.budget = UnitBudget(self.runs, job.ctx, self.unit)

    def _earlier_usage(self) -> list[AttemptUsage]:
        """What this unit spent before a crash, pause or retry: spend is counted once, and kept."""
        previous = self.runs.read_record(self.unit.id)
        return list(previous.usage) if previous is not None else []

    def add_usage(self, usage: Usage) -> None:
        """Add one agent call's usage to the current attempt in the ledger."""
        entries = list(self.record.usage)
        last = entries[-1]
        entries[-1] = last.model_copy(update={"usage": last.usage + usage})
        self.save(usage=entries)

    def check_budget(self, attempt: int, iteration: int) -> None:
        """Before an agent call: raise AttemptFailed(budget) if a budget says no."""
        refusal = self.budget.refusal(self.spent(), attempt, iteration)
        if refusal:
            raise AttemptFailed(FailureClass.BUDGET, refusal)

    def spent(self) -> Usage:
        """What counts against the unit's budget: its own spend (all candidates' for best-of)."""
        return self.record.total_usage

    def stop_check(self) -> Callable[[], bool] | None:
        """What stops the agent mid-call: a hard run budget, once spent."""
        return self.budget.stop_check()

    def stopped_by_budget(self, worktree: Path, failed: AttemptFailed) -> AttemptFailed:
        """A hard budget stopped the agent: keep its partial work on the branch, fail `budget`."""
        if not self.budget.stopped():
            return failed
        sha = self.workspace.commit_all(
            worktree, f"{self.unit.display_title} (partial: stopped by the run's budget)\n"
        )
        return AttemptFailed(
            FailureClass.BUDGET,
            f"run budget spent: agent stopped, partial work kept on {self.record.branch} "
            f"at {sha[:12]}",
        )

    def save(self, **changes) -> None:
        """Change the record and write it to the ledger: for what a crash must not lose."""
        for name, value in changes.items():
            setattr(self.record, name, value)
        self.runs.write_record(self.record)
        note_unit(self.ctx.run_key, self.record)

    def note(self, **changes) -> None:
        """Change the record for the live table only; the next `save` writes it too."""
        for name, value in changes.items():
            setattr(self.record, name, value)
        note_unit(self.ctx.run_key, self.record)

    def run(self) -> UnitRecord:
        started = time.monotonic()
        self.save(status=UnitStatus.RUNNING, started_at=utcnow(), step="queued")
        policy = self.job.settings.retry_policy
        last: AttemptFailed | None = None
        for attempt in range(1, policy.max_attempts + 1):
            if attempt > 1:
                delay = policy.delay_before(attempt)
                delay *= 1 + random.uniform(-policy.jitter, policy.jitter)
                self.save(step=f"waiting {delay:.0f}s before attempt {attempt}")
                time.sleep(max(delay, 0.0))
            self.note(attempts=attempt, error="", failure_class=None)  # saved with its usage
            try:
                self.attempt(attempt)
            except AttemptFailed as failed:
                last = failed
                self.save(error=str(failed), failure_class=failed.failure)
                if failed.failure.value not in policy.retry_on:
                    break
                continue
            self.save(
                status=UnitStatus.SUCCEEDED,
                step="done",
                finished_at=utcnow(),
                duration_s=time.monotonic() - started,
            )
            record_duration(self.runs.store, self.job.settings.resources, self.record.duration_s)
            record_usage(
                self.runs.store,
                self.job.settings.agent_name,
                self.job.settings.agent.model or "",
                self.job.settings.resources,
                prompt_size(self.ctx.request, self.unit),
                self.record.total_usage,
                self.record.duration_s,
            )
            return self.record
        self.save(
            status=UnitStatus.FAILED,
            step="failed",
            finished_at=utcnow(),
            duration_s=time.monotonic() - started,
        )
        raise UnitFailed(
            f"unit {self.unit.id!r} failed after {self.record.attempts} attempt(s): {last}"
        )

    def attempt(self, attempt: int) -> None:
        local = Path(self.ctx.workdir) / "units" / self.store_id / f"attempt-{attempt}"
        log_file = fresh_attempt_dir(local)
        self.save(usage=[*self.record.usage, AttemptUsage(attempt=attempt)])
        try:
            self._attempt(attempt, local, log_file)
        finally:
            self.runs.store.upload_file(self.runs.log_key(self.store_id, attempt), log_file)
            self.record.log_path = self.runs.store.uri(self.runs.log_key(self.store_id, attempt))

    def _attempt(self, attempt: int, local: Path, log_file: Path) -> None:
        worktree = self.make_worktree()
        self.fetch_inputs(local / "inputs")
        prompt_file = local / "prompt.md"
        prompt_file.write_text(self.prompt_text())
        invocation = attempt_invocation(
            self.ctx,
            self.unit,
            self.job.settings,
            worktree,
            local,
            attempt,
            self.workspace.env,
            candidate=self.candidate,
        )
        tests: TestReport | None = None
        for iteration in range(1, self.job.settings.max_iterations + 1):
            self.note(iterations=iteration)
            try:
                self.check_budget(attempt, iteration)
            except AttemptFailed as over:
                if iteration > 1:  # keep what the agent did so far on the unit's branch
                    self.workspace.commit_all(
                        worktree, f"{self.unit.display_title} (partial)\n\n{over}\n"
                    )
                raise
            invocation = invocation.model_copy(
                update={
                    "iteration": iteration,
                    "timeout_s": self.budget.agent_timeout(
                        self.spent(), self.job.settings.timeout_s
                    ),
                }
            )
            try:
                step_agent.with_options(
                    name="agent", task_run_name=self.step(f"agent #{iteration}")
                )(quote(self), quote(invocation))
            except AttemptFailed as failed:
                raise self.stopped_by_budget(worktree, failed) from None
            if self.job.settings.test:
                tests = step_tests.with_options(name="tests", task_run_name=self.step("tests"))(
                    quote(self), worktree, log_file
                )
                self.save(tests=tests)
            if tests is None or tests.ok:
                break
            with prompt_file.open("a") as prompt:
                prompt.write(feedback(iteration, tests))
        if tests is not None and not tests.ok:
            raise AttemptFailed(
                FailureClass.TESTS_FAILED,
                f"tests failed after {self.record.iterations} iteration(s): {tests.one_line()}",
            )
        self.commit(worktree, local / "summary.md")
        self.publish_outputs(local / "outputs")
        self.keep_proposals(local / "new-units.json")
        self.workspace.remove_worktree(worktree)

    # -- the plumbing steps: quick, inside the unit's task run, timed in the ledger ----------

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Run one step: the live table shows it; its seconds add up in `record.steps_s`."""
        self.note(step=step)
        started = time.monotonic()
        try:
            yield
        finally:
            spent = dict(self.record.steps_s)
            spent[step] = round(spent.get(step, 0.0) + time.monotonic() - started, 3)
            self.record.steps_s = spent

    def make_worktree(self) -> Path:
        with self.timed("worktree"):
            start = self.workspace.start_commit(
                self.job.base_commit,
                self.job.dep_branches,
                f"Start of unit {self.unit.id}",
                covered=self.job.covered_branches,
            )
            self.note(start_commit=start)
            return self.workspace.create_worktree(self.record.branch, start)

    def fetch_inputs(self, inputs_dir: Path) -> None:
        if not self.unit.inputs:
            return
        with self.timed("inputs"):
            for ref in self.unit.inputs:
                producer, name = ref.split("/", 1)
                key = self.runs.output_key(producer, name)
                if not self.runs.store.exists(key):
                    raise AttemptFailed(
                        FailureClass.ERROR,
                        f"input {ref!r} is missing from the store ({self.runs.store.uri(key)}); "
                        f"unit {producer!r} did not publish it",
                    )
                self.runs.store.download_file(key, inputs_dir / producer / name)

    def commit(self, worktree: Path, summary_file: Path) -> str:
        with self.timed("commit"):
            summary = summary_file.read_text().strip() if summary_file.exists() else ""
            summary = redact(summary)  # it goes into a commit message, the ledger and the PR
            message = f"{self.unit.display_title}\n\n{summary}\n\nFlotilla-Unit: {self.unit.id}\n"
            sha = self.workspace.commit_all(worktree, message)
            files = self.workspace.changed_files(self.record.start_commit, sha)
            self.runs.store.write_text(self.runs.summary_key(self.store_id), summary + "\n")
            self.note(commit=sha, files_changed=files, summary=summary)
            return sha

    def publish_outputs(self, outputs_dir: Path) -> None:
        with self.timed("outputs"):
            missing = [n for n in self.unit.outputs if not (outputs_dir / n).is_file()]
            if missing:
                raise AttemptFailed(
                    FailureClass.AGENT_FAILED,
                    f"agent did not write its declared output(s) {', '.join(missing)} to "
                    "$FLOTILLA_OUTPUTS_DIR",
                )
            if any(outputs_dir.iterdir()):  # declared outputs are there: checked above
                self.runs.store.upload_dir(self.runs.outputs_prefix(self.store_id), outputs_dir)
            self.note(outputs=sorted(p.name for p in outputs_dir.iterdir() if p.is_file()))

    def step(self, name: str) -> str:
        """A step's task run name: `<unit> · <step>`, so the UI groups a unit's steps."""
        return unit_task_name(self.unit.id, name)

    def keep_proposals(self, path: Path) -> None:
        """Store the follow-up units the agent proposed (before the ledger says succeeded), so
        the scheduler, or a resumed one, finds them in the store."""
        key = proposals_key(self.runs, self.store_id)
        if path.is_file():
            self.runs.store.upload_file(key, path)
        else:
            self.runs.store.delete(key)

    def prompt_text(self) -> str:
        return unit_prompt(self.ctx, self.unit)


def fresh_attempt_dir(local: Path) -> Path:
    """An empty attempt directory (`inputs/`, `outputs/`, `agent.log`); returns the log file."""
    shutil.rmtree(local, ignore_errors=True)
    for sub in ("inputs", "outputs"):
        (local / sub).mkdir(parents=True)
    log_file = local / "agent.log"
    log_file.touch()
    return log_file


def attempt_invocation(
    ctx: RunContext,
    unit: UnitSpec,
    settings: UnitSettings,
    worktree: Path,
    local: Path,
    attempt: int,
    identity_env: dict[str, str],
    candidate: int | None = None,
) -> AgentInvocation:
    """An agent call of one attempt: its files in the attempt directory `local`, the unit's
    settings, the git identity agents that commit need, and (best-of) its candidate number."""
    return AgentInvocation(
        unit_id=unit.id,
        feature_id=ctx.feature_id,
        worktree=worktree,
        prompt_file=local / "prompt.md",
        inputs_dir=local / "inputs",
        outputs_dir=local / "outputs",
        summary_file=local / "summary.md",
        new_units_file=local / "new-units.json",
        request_dir=Path(ctx.request_dir),
        log_file=local / "agent.log",
        timeout_s=settings.timeout_s,
        attempt=attempt,
        extra_env=identity_env,
        env=settings.env,
        pass_env=settings.pass_env,
        agent_name=settings.agent_name,
        usage_file=local / "usage.json",
        candidate=candidate,
    )


def unit_prompt(ctx: RunContext, unit: UnitSpec) -> str:
    """The unit's task as its agent first reads it; rework starts from the same text."""
    feature = ctx.request.feature
    lines = [f"# {unit.display_title}", "", unit.prompt or unit.display_title, ""]
    lines.append(f"This unit is part of the feature: {feature.title}.")
    if feature.description:
        lines += ["", feature.description]
    if unit.touches:
        lines += ["", "Files you are expected to change: " + ", ".join(unit.touches)]
    if unit.inputs:
        lines += [
            "",
            "Inputs from other units are in $FLOTILLA_INPUTS_DIR: " + ", ".join(unit.inputs),
        ]
    if unit.outputs:
        lines += ["", "Write these outputs to $FLOTILLA_OUTPUTS_DIR: " + ", ".join(unit.outputs)]
    return "\n".join(lines) + "\n"


def feedback(iteration: int, tests: TestReport) -> str:
    tail = "\n".join(tests.output_tail.splitlines()[-TAIL_FOR_PROMPT:])
    return (
        f"\n## The tests failed after iteration {iteration}\n\n"
        f"Command: `{tests.command}` — {tests.one_line()}\n\n```\n{tail}\n```\n"
        "Fix the code so that these tests pass.\n"
    )


@task(persist_result=False, cache_policy=NO_CACHE)
def step_agent(runner: UnitRunner, invocation: AgentInvocation) -> AgentOutcome:
    runner.save(step=f"agent (iteration {invocation.iteration})")

    def waiting(seconds: float) -> None:
        runner.save(step=f"rate-limited, waiting {seconds:.0f}s (no attempt spent)")

    try:
        outcome = run_agent_until_done(
            runner.job.settings.agent, invocation, on_wait=waiting, stop=runner.stop_check()
        )
    except AgentGaveUp as gave_up:
        runner.add_usage(gave_up.usage)
        raise AttemptFailed(FailureClass(gave_up.failure), str(gave_up)) from None
    runner.add_usage(outcome.usage)
    return outcome


@task(persist_result=False, cache_policy=NO_CACHE)
def step_tests(runner: UnitRunner, worktree: Path, log_file: Path) -> TestReport | None:
    command = runner.job.settings.test
    if not command:
        return None
    runner.save(step="tests")
    settings = runner.job.settings
    report = run_tests(
        command,
        cwd=worktree,
        timeout_s=settings.timeout_s,
        env=test_env(settings.pass_env, settings.env),
        log_file=log_file,
    )
    runner.runs.store.write_json(runner.runs.unit_tests_key(runner.store_id), report)
    return report
