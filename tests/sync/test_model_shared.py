"""The two-device model (test_model_two.py) with two accounts sharing a folder: dev-a is
one account's device, dev-b the other's. The first shares `s`, the second mounts it at
`s`. Operations run on paths inside the folder and outside it (each account's own
tree), and move files and directories across the boundary (a rename into or out of the
folder changes namespace on the server; a hard link across it is EXDEV).

After each settle the model's rules (tests/model.py) hold over both drives seen as one
tree: the shared folder (`s/...`, the same on both mounts) beside each account's own
tree (`a:/...`, `b:/...`). So: the folder converges; nothing written is lost, wherever
it was moved; nothing is invented or resurrected; and where one device acted alone
(always the case in an account's own tree, which only its one device sees) the result
is exactly what that device made. Conflicted copies inside the folder name the account
as well. The hooks: the Ledger's `place` books each device's paths in that tree,
`placed`/`compared` build its views, and the Actor takes EXDEV as an outcome and never
picks the folder itself.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import uuid
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import Phase
from hypothesis.stateful import initialize, rule

from tests.harness import CLOUDFS, MountProcess, cloudfs_mount, wait_until
from tests.model import View, merged
from tests.model_ops import LINK_POOL, NAMES
from tests.sync.test_model_two import EXPLORE, SEEDS, SIZES, TwoDevices, picks, run_machine

pytestmark = pytest.mark.timeout(360 if not EXPLORE else 120 + 90 * EXPLORE)

SHARED = "s"
FILE_POOL = ("s/x.txt", "s/y", "s/d/x.txt", "s/d/e/x.txt", "x.txt", "d/y", "e/x.txt")
DIR_POOL = ("s/d", "s/e", "s/d/e", "d", "e")
POOL = FILE_POOL + DIR_POOL
DEVICES = st.sampled_from("ab")
FILES = st.one_of(st.sampled_from(FILE_POOL), picks("file"))
DIRS = st.one_of(st.sampled_from(DIR_POOL), picks("dir"))
ANY = st.one_of(st.sampled_from(POOL), picks("file"), picks("dir"))
OPS = st.one_of(
    *[st.tuples(st.just("write"), DEVICES, FILES, SIZES, SEEDS)] * 3,
    *[st.tuples(st.just("append"), DEVICES, FILES, st.integers(1, 2000), SEEDS)] * 2,
    st.tuples(st.just("truncate"), DEVICES, FILES, st.integers(0, 4000)),
    st.tuples(st.just("unlink"), DEVICES, FILES),
    st.tuples(st.just("mkdir"), DEVICES, DIRS),
    st.tuples(st.just("rm_r"), DEVICES, st.one_of(DIRS, FILES)),
    *[st.tuples(st.just("rename"), DEVICES, ANY, ANY)] * 3,
    *[st.tuples(st.just("link"), DEVICES, FILES, st.sampled_from(FILE_POOL))] * 2,
)


def inside(path: str) -> bool:
    return path == SHARED or path.startswith(SHARED + "/")


def place(dev: str, path: str) -> str:
    """Where a device's path lies in the compared tree: the folder once (`s/...`), each
    account's own tree under a name of its own (`a:/...`, `b:/...`)."""
    return path if inside(path) else f"{dev}:/{path}"


def cli(*args: str, cwd: Path | None = None) -> None:
    done = subprocess.run([*CLOUDFS, *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert done.returncode == 0, f"cloudfs {' '.join(args)}: {done.stderr}"


class SharedFolder(TwoDevices):
    names_allowed = NAMES | {SHARED, "a:", "b:"}

    def __init__(self) -> None:
        super().__init__()
        self.ledger.place = place
        self.actor.also = frozenset({errno.EXDEV})  # a hard link across the folder's boundary
        self.actor.fixed = frozenset({SHARED})  # a Pick never renames or removes the folder itself
        self.actor.pools = {"file": FILE_POOL, "dir": DIR_POOL, "link": LINK_POOL}

    def open_mounts(self) -> dict[str, MountProcess]:
        owner, member = f"ms-{uuid.uuid4().hex[:8]}", f"ms-{uuid.uuid4().hex[:8]}"
        tokens = self.server.add_user(owner), self.server.add_user(member)
        a = self.stack.enter_context(cloudfs_mount(self.server, tokens[0], self.tmp / "a", self.tmp / "cache-a",
                                                   device="dev-a"))
        b = self.stack.enter_context(cloudfs_mount(self.server, tokens[1], self.tmp / "b", self.tmp / "cache-b",
                                                   device="dev-b"))
        os.mkdir(a.path / SHARED)
        a.sync()
        cli("share", str(a.path / SHARED), member)
        listed = subprocess.run([*CLOUDFS, "shares", "--json"], capture_output=True, text=True, timeout=60,
                                cwd=b.path)
        ns = json.loads(listed.stdout)[0]["id"]
        cli("shares", "accept", str(ns), "--at", str(b.path / SHARED))
        wait_until(lambda: (b.path / SHARED).is_dir(), timeout=30, what="the shared folder on dev-b")
        return {"a": a, "b": b}

    # --- the compared tree: the folder once, each account's own tree beside it ---

    def placed(self, dev: str, seen: View) -> View:
        return seen.mapped(lambda p: place(dev, p))

    def compared(self, seen: dict[str, View]) -> dict[str, View]:
        """Each account's own tree, which only its one device shows, beside the folder
        as each device shows it."""
        own = [one.mapped(lambda p, dev=dev: None if inside(p) else place(dev, p)) for dev, one in seen.items()]
        return {dev: merged(*own, one.mapped(lambda p: p if inside(p) else None)) for dev, one in seen.items()}

    @initialize(dev=DEVICES, files=st.lists(st.sampled_from(FILE_POOL), min_size=3, unique=True), seed=SEEDS)
    def start(self, dev: str, files: list[str], seed: int) -> None:
        self.busy = True
        self.ledger.touched(dev, SHARED)  # made when the example opened its mounts
        for d in ("s/d", "s/d/e", "s/e"):
            os.mkdir(self.mounts[dev].path / d)
            self.ledger.touched(dev, d)
        for each in "ab":  # each account's own tree
            for d in ("d", "e"):
                os.mkdir(self.mounts[each].path / d)
                self.ledger.touched(each, d)
        for i, path in enumerate(files):
            data = self.ledger.new_content(dev, 200 + 100 * i, seed + i)
            (self.mounts[dev].path / path).write_bytes(data)
            self.ledger.produce(dev, b"", data, path)
            self.ledger.touched(dev, path)
        self.note(dev, f"start: directories s/d, s/d/e, s/e and each account's d, e; files {', '.join(files)}")
        self.ops += 1
        self.check_round()
        self.busy = False

    @rule(ops=st.lists(OPS, min_size=1, max_size=8))
    def round(self, ops: list[tuple]) -> None:
        TwoDevices.round(self, ops)


def test_two_accounts_share_a_folder_random_operations(sync_server, tmp_path):
    SharedFolder.server = sync_server
    SharedFolder.base_dir = tmp_path
    phases = [Phase.explicit, Phase.reuse, Phase.generate]
    SharedFolder.stats.clear()
    run_machine(SharedFolder, phases)
    print(f"shared-folder model: {dict(SharedFolder.stats)}")
    assert "Traceback" not in sync_server.log(), sync_server.log()[-5000:]
