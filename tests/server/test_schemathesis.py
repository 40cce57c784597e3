"""Schemathesis against the live server's /openapi.json: no input, valid or not, gets a 5xx.

Every operation in the schema is fuzzed as a logged-in user with schema-conforming and
schema-violating data (wrong types, out-of-range and huge numbers, NUL bytes, missing
and extra fields), in the examples, coverage and fuzzing phases. Besides "never a 5xx"
the cheap conformance checks run too: the status code is one the schema declares, the
content type is JSON and the body matches its schema, so every error is an `ErrorBody`
with `error`, `detail` and `field`.

This drives schemathesis' engine (what `schemathesis run` uses) rather than its pytest
plugin, whose lazy `from_fixture` loader does not work under pytest 9. Bounded: eleven
examples per operation in the fuzzing phase (the coverage phase adds its own boundary
cases: about 1,000 requests in all), one pass of each phase, no stateful phase,
long-polls pinned to `wait=0`: each engine takes 40-100 seconds depending on the
machine's load (the web page's routes made the schema half as large again), and the run
is stopped and failed if it passes 150 seconds.
"""

from __future__ import annotations

import time

import schemathesis
import schemathesis.engine
from schemathesis.engine import Status, StopReason, events

MAX_EXAMPLES = 11  # 15 before the ten routes of shared folders: about the same number of requests
TIME_BUDGET = 150
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance"]


def _config(token: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "headers": {"Authorization": f"Bearer {token}"},
        "request-timeout": 30,
        # One worker: with two, a run once failed on an ImportError inside hypothesis
        # ("cannot import name 'RandomStrategy'"), a lazy import racing between threads.
        "workers": 1,
        # A schema-conforming `wait` may be up to 60 s; the negative phase still sends bad ones.
        "parameters": {"wait": 0},
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "allow-x00": True},
        "phases": {"stateful": {"enabled": False}},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    })


def _describe(event: events.ScenarioFinished) -> list[str]:
    out = []
    for checks in event.recorder.checks.values():
        for check in checks:
            if check.failure_info is None:
                continue
            failure = check.failure_info.failure
            out.append(f"{event.label} [{event.phase.value}] {check.name}: {failure.title}\n"
                       f"{failure.message}\n{check.failure_info.code_sample}")
    return out or [f"{event.label} [{event.phase.value}]: {event.status.value}"]


def run_schemathesis(url: str, token: str) -> tuple[list[str], events.EngineFinished | None, int]:
    """Problems found (one readable string each), the final event, and how many
    scenarios ran."""
    schema = schemathesis.openapi.from_url(url + "/openapi.json", config=_config(token))
    problems: list[str] = []
    finished: events.EngineFinished | None = None
    scenarios = 0
    stopped = False
    deadline = time.monotonic() + TIME_BUDGET
    stream = schemathesis.engine.from_schema(schema).execute()
    for event in stream:
        if time.monotonic() > deadline and not stopped:
            # No `max-time` in the config: with one, schemathesis keeps fuzzing until it
            # runs out. Without, it makes one pass; this only stops a pass that overruns.
            stopped = True
            problems.append(f"not finished after {TIME_BUDGET} s: lower MAX_EXAMPLES")
            stream.stop()
        if isinstance(event, events.ScenarioFinished):
            scenarios += 1
            if event.status in (Status.FAILURE, Status.ERROR):
                problems.extend(_describe(event))
        elif isinstance(event, events.NonFatalError):
            problems.append(f"{event.label}: error {event.value!r}")
        elif isinstance(event, events.FatalError):
            problems.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            finished = event
    return problems, finished, scenarios


def test_schemathesis_finds_no_server_errors(server, alice):  # noqa: ANN001
    # Something for generated ids to hit: a directory, a file with a version, a symlink.
    d = alice.post("/dirs", json={"parent_id": alice.root_id, "name": "fuzz"}).json()["node"]
    alice.post("/files", json={"parent_id": d["id"], "name": "empty", "base_rev": 0, "size": 0, "mtime_ns": 1,
                               "chunks": []})
    alice.post("/symlinks", json={"parent_id": d["id"], "name": "link", "target": "empty"})

    started = time.monotonic()
    problems, finished, scenarios = run_schemathesis(server.url, alice.token)
    elapsed = time.monotonic() - started

    assert not problems, f"{len(problems)} problem(s):\n\n" + "\n\n".join(problems[:20])
    assert finished is not None and finished.stop_reason == StopReason.COMPLETED, finished
    assert scenarios > 0
    assert elapsed < TIME_BUDGET
    log = server.log()
    assert "unhandled error" not in log and "Traceback" not in log, log[-5000:]
