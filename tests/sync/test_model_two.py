"""Random operations on two mounts of one account (devices dev-a and dev-b), settled
every few operations; after each settle both mounts must agree and no written byte may
be lost.

The model and its rules are in tests/model.py (shared with the soak, tests/soak), the
operations in tests/model_ops.py. An example starts from a settled tree (directories
d, d/e, e and a few files), then runs rounds: one to eight operations, each on a device
chosen at random, on paths from a small pool (or on whatever exists, conflicted copies
included) so they collide; then a settle, `a.sync(); b.sync(); a.sync(); b.sync()`.
After it both mounts show the same tree with the same bytes, read through the kernel's
page cache and again straight from the mount process (page cache dropped), and the
books hold (tests/model.py: nothing invented, lost or resurrected; exact where the
devices did not meet). Hard links (`link`, contents counted per inode, the same names
grouped into files on both) and extended attributes (`xattr`) are among the operations.

Deterministic in CI: the same few programs every run (`derandomize`), no shrinking
(every example mounts twice). CLOUDFS_HYPOTHESIS_EXAMPLES=N explores N random programs;
CLOUDFS_MODEL_TRACE=1 prints every example's operations; `pytest -s` prints counts
(rounds, rounds where the devices met, conflicted copies). A failure prints the
operations with their outcomes, the warnings of both mount logs, and keeps the
example's mounts' logs and caches under pytest's tmp dir.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections import Counter
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from tests.harness import MountProcess, ServerProcess
from tests.model import Entry, Ledger, View, base_path, diff, label, snapshot, view
from tests.model_ops import DIR_POOL, FILE_POOL, NAMES, NEW_NAMES, Actor, Pick, Unexpected, now_stamp
from tests.sync.conftest import two_devices

EXPLORE = int(os.environ.get("CLOUDFS_HYPOTHESIS_EXAMPLES", "0"))
EXAMPLES = EXPLORE or 6
ROUNDS = 7  # settled rounds per example, after the start
pytestmark = pytest.mark.timeout(300 if not EXPLORE else 120 + 90 * EXPLORE)

POOL = FILE_POOL + DIR_POOL


def picks(kind: str) -> st.SearchStrategy[Pick]:
    return st.builds(Pick, st.just(kind), st.integers(0, 40))


DEVICES = st.sampled_from("ab")
FILES = st.one_of(st.sampled_from(FILE_POOL), picks("file"))
DIRS = st.one_of(st.sampled_from(DIR_POOL), picks("dir"))
ANY = st.one_of(st.sampled_from(POOL), picks("file"), picks("dir"))
SIZES = st.one_of(st.integers(1, 3000), st.integers(1, 3000), st.integers(1, 3000), st.integers(100_000, 400_000))
SEEDS = st.integers(0, 2**32 - 1)
OPS = st.one_of(
    *[st.tuples(st.just("write"), DEVICES, FILES, SIZES, SEEDS)] * 3,
    *[st.tuples(st.just("append"), DEVICES, FILES, st.integers(1, 2000), SEEDS)] * 2,
    st.tuples(st.just("truncate"), DEVICES, FILES, st.integers(0, 4000)),
    st.tuples(st.just("unlink"), DEVICES, FILES),
    st.tuples(st.just("mkdir"), DEVICES, DIRS),
    st.tuples(st.just("rm_r"), DEVICES, st.one_of(DIRS, FILES)),
    *[st.tuples(st.just("rename"), DEVICES, ANY, ANY)] * 2,
    *[st.tuples(st.just("link"), DEVICES, FILES, st.sampled_from(FILE_POOL + NEW_NAMES))] * 4,
    st.tuples(st.just("xattr"), DEVICES, st.one_of(FILES, DIRS), st.integers(0, 2),
              st.one_of(st.just(0), st.integers(1, 200)), SEEDS),
)


class TwoDevices(RuleBasedStateMachine):
    """The hooks a variant overrides (test_model_shared.py: two accounts sharing a
    folder): `open_mounts`, `placed` and `compared` (the tree the books keep and the
    devices must agree on), `names_allowed` (the names nothing invents); and it sets
    the Ledger's `place` and the Actor's `also`, `fixed` and `pools` in __init__."""

    server: ServerProcess
    base_dir: Path
    names_allowed: set[str] = NAMES
    stats: Counter[str] = Counter()  # over the whole run, printed at the end (pytest -s)

    def __init__(self) -> None:
        super().__init__()
        self.tmp = self.base_dir / uuid.uuid4().hex[:8]
        self.stack = contextlib.ExitStack()
        try:
            self.mounts = self.open_mounts()
        except BaseException:
            self.stack.close()
            raise
        self.history: list[str] = [f"example in {self.tmp}"]
        self.ledger = Ledger()
        self.actor = Actor(self.ledger, {dev: m.path for dev, m in self.mounts.items()}, self.note)
        self.ops = 0
        self.rounds = 0
        self.busy = False  # a rule is running: if teardown sees it set, that rule failed
        self.stats["examples"] += 1

    def open_mounts(self) -> dict[str, MountProcess]:
        """Two devices of one account, entered on self.stack."""
        token = self.server.add_user(f"m2-{uuid.uuid4().hex[:10]}")
        d = self.stack.enter_context(two_devices(self.server, token, self.tmp))
        return {"a": d.a, "b": d.b}

    def note(self, dev: str, text: str) -> None:
        """One line of the story, stamped like the mount logs (local time, ms)."""
        self.history.append(f"{now_stamp()} {dev}: {text}")

    # --- the compared tree: one account, so each mount's view as it is ---

    def placed(self, dev: str, seen: View) -> View:
        """A device's view (of its mount) with its paths where the books keep them."""
        return seen

    def compared(self, seen: dict[str, View]) -> dict[str, View]:
        """The tree the devices must agree on after a settle, as each one shows it
        (`seen`: the view of each device's mount)."""
        return seen

    # --- the tree every example starts from, settled: both devices then edit one base ---

    @initialize(dev=DEVICES, files=st.lists(st.sampled_from(FILE_POOL[:6]), min_size=3, unique=True), seed=SEEDS)
    def start(self, dev: str, files: list[str], seed: int) -> None:
        self.busy = True
        root = self.mounts[dev].path
        for d in ("d", "d/e", "e"):
            os.mkdir(root / d)
            self.ledger.touched(dev, d)
        for i, path in enumerate(files):
            data = self.ledger.new_content(dev, 200 + 100 * i, seed + i)
            (root / path).write_bytes(data)
            self.ledger.produce(dev, b"", data)
            self.ledger.touched(dev, path)
        self.note(dev, f"start: directories d, d/e, e; files {', '.join(files)}")
        self.ops += 1
        self.check_round()
        self.busy = False

    # --- operations ---

    @rule(ops=st.lists(OPS, min_size=1, max_size=8))
    def round(self, ops: list[tuple]) -> None:
        """A few operations on either device while live sync runs, then a settle."""
        self.busy = True
        for kind, dev, *args in ops:
            self.ops += 1
            try:
                outcome = self.actor.run(kind, dev, *args)
            except Unexpected as exc:
                raise AssertionError(f"{exc}\n{self.story()}") from exc
            self.stats["ops failed (errno)" if not outcome.startswith(("ok", "same")) else "ops ok"] += 1
        self.check_round()
        self.busy = False

    # --- settling and the checks ---

    def check_round(self) -> None:
        self.rounds += 1
        self.note("--", f"settle {self.rounds}")
        before = {dev: self.placed(dev, view(m.path)) for dev, m in self.mounts.items()}
        a, b = self.mounts["a"], self.mounts["b"]
        for m in (a, b, a, b):
            m.sync(timeout=60)
        seen = {dev: view(m.path) for dev, m in self.mounts.items()}
        for dev, one in seen.items():
            served = snapshot(self.mounts[dev].path, uncached=True)
            if served != one.tree:
                self._fail(f"dev-{dev}: the kernel's page cache and the mount process disagree",
                           diff(one.tree, served, "page cache", "mount process"))
        compared = self.compared(seen)
        final, other = compared["a"], compared["b"]
        differences = final.differences(other, "a", "b")
        if differences:
            later = "never"
            for attempt in range(3):
                a.sync(timeout=60)
                b.sync(timeout=60)
                again = self.compared({dev: view(m.path) for dev, m in self.mounts.items()})
                if not again["a"].differences(again["b"], "a", "b"):
                    later = f"after {attempt + 1} more a/b syncs"
                    break
            self._fail("the mounts differ after a, b, a, b sync (converged: " + later + ")", "\n".join(differences))
        for what, detail in self.ledger.problems(final, before, self.names_allowed):
            self._fail(what, detail)
        _, contested = self.ledger.inexact(before, final)
        self.stats["rounds"] += 1
        self.stats["rounds where the devices met"] += bool(contested)
        self.stats["conflicted copies"] += sum(1 for p in final.tree
                                               if base_path(p) != p and p not in self.ledger.settled)
        self.ledger.roll(final)
        self.ops = 0

    def story(self) -> str:
        logs = []
        for dev, m in self.mounts.items():
            lines = [ln for ln in m.log().splitlines() if " WARNING " in ln or " ERROR " in ln]
            logs.append(f"dev-{dev} log ({m.log_path}), warnings and errors:\n  " + "\n  ".join(lines[-30:]))
        return "operations:\n  " + "\n  ".join(self.history) + "\n" + "\n".join(logs)

    def _fail(self, what: str, detail: str) -> None:
        settled: dict[str, Entry] = self.ledger.settled
        raise AssertionError(f"{what}\n{detail}\nsettled before: "
                             f"{ {p: label(v) for p, v in settled.items()} }\n{self.story()}")

    def teardown(self) -> None:
        if os.environ.get("CLOUDFS_MODEL_TRACE"):
            print("\n".join(self.history), flush=True)
        try:
            if not self.busy:
                if self.ops:
                    self.check_round()
                for dev, m in self.mounts.items():
                    errors = [ln for ln in m.log().splitlines() if " ERROR " in ln or "Traceback" in ln]
                    assert not errors, f"dev-{dev} logged errors:\n" + "\n".join(errors[:20]) + "\n" + self.story()
        finally:
            self.stack.close()
        if not self.busy:
            shutil.rmtree(self.tmp, ignore_errors=True)


def run_machine(machine: type[RuleBasedStateMachine], phases: list[Phase]) -> None:
    """Run `machine`'s programs. The settings go on a subclass made for the run: hypothesis
    refuses a machine whose class (or a base of it) already had settings applied, and
    SharedFolder is a TwoDevices, so the two tests could not run in one process."""
    run = type(machine.__name__, (machine,), {})
    settings(max_examples=EXAMPLES, stateful_step_count=ROUNDS + 1, deadline=None, derandomize=not EXPLORE,
             database=None, phases=phases, suppress_health_check=list(HealthCheck), print_blob=False)(run)
    run.TestCase().runTest()


def test_two_devices_random_operations(sync_server, tmp_path):
    TwoDevices.server = sync_server
    TwoDevices.base_dir = tmp_path
    # Deterministic in CI (the same programs every run); CLOUDFS_HYPOTHESIS_EXAMPLES=N
    # explores N random ones instead. No shrinking: every example mounts two devices.
    phases = [Phase.explicit, Phase.reuse, Phase.generate]
    if os.environ.get("CLOUDFS_HYPOTHESIS_SHRINK"):
        phases.append(Phase.shrink)
    TwoDevices.stats.clear()
    run_machine(TwoDevices, phases)
    print(f"two-device model: {dict(TwoDevices.stats)}")
    assert "Traceback" not in sync_server.log(), sync_server.log()[-5000:]
