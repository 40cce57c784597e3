"""A short fixed slice of the soak (scripts/soak.py) in CI: the same programs every run,
three devices, faults included. The long runs are the script's (RELIABILITY.md).

The seeds are chosen so the slice holds every fault kind of the table (kill -9 of a
mount mid-upload, mid-apply and at random, server kill -9 and stop, hang, 503s, lost
answers, a device offline), hard links and extended attributes among some seventy
operations. A failure prints the program's
story and the command that replays it; its logs and caches stay under pytest's tmp dir.
"""

from __future__ import annotations

import os

import pytest

from tests.soak.cluster import Cluster
from tests.soak.program import CHAOS, FAULTS, generate
from tests.soak.run import run_program

SLICE_SEED = int(os.environ.get("CLOUDFS_SOAK_SEED", "7282"))
SLICE_PROGRAMS = int(os.environ.get("CLOUDFS_SOAK_PROGRAMS", "5"))
pytestmark = pytest.mark.timeout(120 + 60 * SLICE_PROGRAMS)


def test_the_slice_covers_every_fault():
    """The slice's programs hold every kind of fault the soak knows."""
    kinds = set()
    for i in range(SLICE_PROGRAMS):
        for step in generate(SLICE_SEED + i, 3).steps:
            if step.at == CHAOS or step.kind == "kill":
                kinds.add(step.kind)
    wanted = {"kill", "kill-apply", "restart", "hang", "errors", "lose", "offline"}
    assert wanted <= kinds, f"the slice lacks {wanted - kinds}: pick another CLOUDFS_SOAK_SEED"
    assert {k for k, _, _ in FAULTS} - {"kill-upload"} <= wanted
    operations = {step.kind for i in range(SLICE_PROGRAMS) for step in generate(SLICE_SEED + i, 3).steps}
    assert {"link", "xattr", "symlink", "rename", "rm_r"} <= operations, "the slice lacks an operation kind"


def test_soak_slice(tmp_path):
    cluster = Cluster(tmp_path / "cluster")
    failures = []
    try:
        for i in range(SLICE_PROGRAMS):
            program = generate(SLICE_SEED + i, 3)
            outcome = run_program(cluster, program, tmp_path / f"program-{program.seed}", fsck=i == SLICE_PROGRAMS - 1)
            print(f"program {program.seed}: {'ok' if outcome.ok else outcome.what}, {outcome.ops} ops, "
                  f"{outcome.kills} kills, {outcome.restarts} restarts, {outcome.outages} outages, "
                  f"{outcome.seconds:.1f} s")
            if not outcome.ok:
                failures.append(f"program {program.seed} (replay: scripts/soak.py --seed {program.seed} "
                                f"--programs 1):\n" + "\n".join(f"{w}\n{d}" for w, d in outcome.problems)
                                + "\n" + outcome.story)
    finally:
        cluster.close()
    assert not failures, "\n\n".join(failures)
