"""Soak programs: what one is, how it is made from a seed, and its JSON form.

A program is a start (a few directories and files made on device a, then settled) and
a list of steps. A step runs on one device's thread (an operation of
tests/model_ops.OPERATIONS, or `kill`: kill -9 of that device's mount, mounted again on
its cache) or on the chaos thread (a fault of the whole cluster: `restart`, `hang`,
`errors`, `offline`, `lose`, `kill-apply`). The chaos thread may act on a device too
(`kill-apply`: a burst of files on one device, then the kill of another); it takes that
device's turn, so a device's operations never overlap; each thread runs its steps in order, each after its `delay`, and
all threads run at once. The tables below say what is made how often: a new operation
kind is a row in OPS (and a function in model_ops), a new fault a row in FAULTS (and a
method of Cluster).

Everything is drawn from `random.Random(seed)`, so a seed is a program: replaying it
runs the same steps (with other timing: outcomes may differ, which is why a failure is
replayed more than once while it is shrunk).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from tests.model_ops import DIR_POOL, FILE_POOL, LINK_POOL, NEW_NAMES, Pick

CHAOS = "chaos"


@dataclass
class Step:
    at: str
    """The thread: a device letter, or CHAOS."""
    kind: str
    args: list[Any]
    delay: float = 0.0
    """Seconds its thread waits before it."""

    def describe(self) -> str:
        shown = ", ".join(f"{a.kind}#{a.index}" if isinstance(a, Pick) else repr(a) for a in self.args)
        return f"{self.at}: {self.kind}({shown}) after {self.delay:.2f}s"


@dataclass
class Program:
    seed: int
    devices: int
    start_files: list[tuple[str, int]]
    """(path, size) of the files device a makes before the steps."""
    start_dirs: list[str]
    steps: list[Step] = field(default_factory=list)

    def names(self) -> list[str]:
        return [chr(ord("a") + i) for i in range(self.devices)]

    def to_json(self) -> str:
        def enc(value: Any) -> Any:
            if isinstance(value, Pick):
                return {"pick": value.kind, "index": value.index}
            return value
        body = asdict(self)
        body["steps"] = [{**asdict(s), "args": [enc(a) for a in s.args]} for s in self.steps]
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Program":
        body = json.loads(text)

        def dec(value: Any) -> Any:
            if isinstance(value, dict) and "pick" in value:
                return Pick(value["pick"], value["index"])
            return value
        steps = [Step(s["at"], s["kind"], [dec(a) for a in s["args"]], s["delay"]) for s in body.pop("steps")]
        body["start_files"] = [tuple(f) for f in body["start_files"]]
        return cls(**body, steps=steps)

    def without(self, drop: set[int]) -> "Program":
        return Program(self.seed, self.devices, self.start_files, self.start_dirs,
                       [s for i, s in enumerate(self.steps) if i not in drop])


# --- what operations are made of ---

def _file(r: random.Random) -> str | Pick:
    return r.choice(FILE_POOL) if r.random() < 0.6 else Pick("file", r.randrange(40))


def _dir(r: random.Random) -> str | Pick:
    return r.choice(DIR_POOL) if r.random() < 0.6 else Pick("dir", r.randrange(40))


def _any(r: random.Random) -> str | Pick:
    roll = r.random()
    if roll < 0.45:
        return r.choice(FILE_POOL + DIR_POOL)
    if roll < 0.55:
        return r.choice(LINK_POOL) if r.random() < 0.5 else Pick("link", r.randrange(40))
    return Pick("file" if roll < 0.8 else "dir", r.randrange(40))


def _link_name(r: random.Random) -> str | Pick:
    roll = r.random()
    return r.choice(NEW_NAMES) if roll < 0.5 else r.choice(FILE_POOL) if roll < 0.8 else _file(r)


def _size(r: random.Random) -> int:
    roll = r.random()
    if roll < 0.75:
        return r.randint(1, 3000)
    if roll < 0.95:
        return r.randint(100_000, 400_000)
    return r.randint(1 << 20, 4 << 20)  # several chunks: an upload a kill can land in


def _seed(r: random.Random) -> int:
    return r.randrange(2**32)


OPS: list[tuple[str, int, Callable[[random.Random], list[Any]]]] = [
    ("write", 6, lambda r: [_file(r), _size(r), _seed(r)]),
    ("create", 2, lambda r: [_file(r), r.randint(1, 3000), _seed(r)]),
    ("append", 3, lambda r: [_file(r), r.randint(1, 2000), _seed(r)]),
    ("truncate", 2, lambda r: [_file(r), r.randint(0, 4000)]),
    ("unlink", 2, lambda r: [_file(r) if r.random() < 0.8 else r.choice(LINK_POOL)]),
    ("mkdir", 2, lambda r: [_dir(r)]),
    ("rmdir", 1, lambda r: [_dir(r)]),
    ("rm_r", 2, lambda r: [_dir(r) if r.random() < 0.7 else _file(r)]),
    ("rename", 5, lambda r: [_any(r), _any(r)]),
    ("symlink", 1, lambda r: [r.choice(LINK_POOL)]),
    ("burst", 1, lambda r: [_dir(r), r.randint(5, 40), _seed(r)]),
    ("link", 3, lambda r: [_file(r), _link_name(r)]),
    ("xattr", 2, lambda r: [_file(r) if r.random() < 0.7 else _dir(r), r.randrange(3),
                            0 if r.random() < 0.25 else r.randint(1, 200), _seed(r)]),
]
"""(operation kind, weight, its arguments from a Random)."""

def _kill_apply(r: random.Random, devs: list[str]) -> list[Step]:
    """[victim, maker, directory, files, seed, seconds from the burst to the kill, pause]"""
    victim = r.choice(devs)
    maker = r.choice([d for d in devs if d != victim] or devs)
    return [Step(CHAOS, "kill-apply", [victim, maker, _dir(r), r.randint(10, 60), _seed(r), r.uniform(0.05, 0.8),
                                       r.uniform(0, 0.5)], r.uniform(0, 1.5))]


FAULTS: list[tuple[str, int, Callable[[random.Random, list[str]], list[Step]]]] = [
    # kill -9 of a mount mid-upload: a file of several chunks, then the kill before it is up
    ("kill-upload", 3, lambda r, devs: (lambda d: [
        Step(d, "write", [_file(r), r.randint(1 << 20, 6 << 20), _seed(r)], r.uniform(0, 0.3)),
        Step(d, "kill", [r.uniform(0, 0.5)], r.uniform(0, 0.4))])(r.choice(devs))),
    # kill -9 at a random moment
    ("kill", 2, lambda r, devs: [Step(r.choice(devs), "kill", [r.uniform(0, 0.5)], r.uniform(0, 1.5))]),
    # kill -9 mid-apply: another device makes a burst of files, the kill comes as they arrive
    ("kill-apply", 2, lambda r, devs: _kill_apply(r, devs)),
    ("restart", 2, lambda r, devs: [Step(CHAOS, "restart", [r.uniform(0, 2.0), r.random() < 0.7], r.uniform(0, 1.5))]),
    ("hang", 2, lambda r, devs: [Step(CHAOS, "hang", [r.uniform(0.5, 4.0)], r.uniform(0, 1.5))]),
    ("errors", 2, lambda r, devs: [Step(CHAOS, "errors", [r.uniform(0.5, 4.0), r.choice([0.3, 0.6, 1.0]), _seed(r)],
                                        r.uniform(0, 1.5))]),
    # the server carries out a device's next requests but their answers are lost
    ("lose", 2, lambda r, devs: [Step(CHAOS, "lose", [r.choice(devs), r.randint(1, 4)], r.uniform(0, 1.5))]),
    ("offline", 2, lambda r, devs: [Step(CHAOS, "offline", [r.choice(devs), r.uniform(0.5, 5.0)], r.uniform(0, 1.5))]),
]
"""(fault, weight, the steps it adds)."""


def generate(seed: int, devices: int, *, max_ops: int = 24, max_faults: int = 3) -> Program:
    r = random.Random(seed)
    names = [chr(ord("a") + i) for i in range(devices)]
    dirs = ["d", "d/e", "e"] + (["e/d"] if r.random() < 0.3 else [])
    files = r.sample(FILE_POOL, r.randint(2, 6))
    program = Program(seed, devices, [(f, r.choice([r.randint(1, 3000), r.randint(100_000, 300_000)])) for f in files],
                      dirs)
    steps: list[Step] = []
    for _ in range(r.randint(4, max_ops)):
        kind = r.choices([k for k, _, _ in OPS], weights=[w for _, w, _ in OPS])[0]
        make = next(m for k, _, m in OPS if k == kind)
        delay = r.choice([0.0, 0.0, r.uniform(0, 0.05), r.uniform(0, 0.3), r.uniform(0.3, 1.0)])
        steps.append(Step(r.choice(names), kind, make(r), delay))
    n_faults = r.choices(range(max_faults + 1), weights=[1] + [3] * max_faults)[0]
    for _ in range(n_faults):
        kind = r.choices([k for k, _, _ in FAULTS], weights=[w for _, w, _ in FAULTS])[0]
        make = next(m for k, _, m in FAULTS if k == kind)
        at = r.randint(0, len(steps))
        steps[at:at] = make(r, names)
    program.steps = steps
    return program
