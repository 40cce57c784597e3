"""fs/pagecache.ReadAround without a kernel: which windows it pushes, and that a push
never lands over a writer's pages or after another device's invalidation."""

from __future__ import annotations

import threading

import trio

from cloudfs.fs.pagecache import AROUND, ReadAround

KiB = 1024
FILE = bytes(range(256)) * 4096  # 1 MiB


class Kernel:
    """Records stores and invalidations; a store can be held until released."""

    def __init__(self) -> None:
        self.stored: list[tuple[int, int, int]] = []
        self.invalidated: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()

    def store(self, ino: int, off: int, data: bytes) -> None:
        self.entered.set()
        assert self.hold.wait(10)
        assert data == FILE[off:off + len(data)]
        self.stored.append((ino, off, len(data)))

    def invalidate(self, ino: int) -> None:
        self.invalidated.append(ino)


def run(scenario) -> Kernel:  # noqa: ANN001
    kernel = Kernel()
    around = ReadAround(store=kernel.store, invalidate=kernel.invalidate)
    writers: dict[int, int] = {}
    reading = trio.Event()
    gate: list[trio.Event] = []

    async def read(ino: int, off: int, size: int) -> bytes:
        reading.set()
        if gate:
            await gate[0].wait()
        return FILE[off:off + size]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(around.run, read, lambda ino: writers.get(ino, 0))
            await scenario(around, kernel, writers, reading, gate)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return kernel


async def settle() -> None:
    for _ in range(50):
        await trio.sleep(0.01)


def test_a_read_pushes_its_window_clamped_to_the_file() -> None:
    async def scenario(around, kernel, writers, reading, gate):  # noqa: ANN001
        around.after_read(5, 200 * KiB, 4 * KiB, len(FILE), 0)
        await settle()
        around.after_read(5, len(FILE) - 4 * KiB, 4 * KiB, len(FILE) - 100, 0)  # the file shrank: its end
        await settle()
    kernel = run(scenario)
    assert kernel.stored == [(5, AROUND, AROUND), (5, len(FILE) - AROUND, AROUND - 100)]


def test_nothing_is_pushed_while_the_file_is_open_for_writing() -> None:
    async def scenario(around, kernel, writers, reading, gate):  # noqa: ANN001
        writers[5] = 1
        around.after_read(5, 0, 4 * KiB, len(FILE), 1)
        await settle()
    assert run(scenario).stored == []


def test_a_push_read_before_an_open_for_writing_does_not_land() -> None:
    async def scenario(around, kernel, writers, reading, gate):  # noqa: ANN001
        gate.append(trio.Event())
        around.after_read(5, 0, 4 * KiB, len(FILE), 0)
        await reading.wait()
        await around.quiesce(5)  # the open for writing
        writers[5] = 1
        gate[0].set()
        await settle()
    assert run(scenario).stored == []


def test_an_open_for_writing_waits_for_the_push_in_flight() -> None:
    async def scenario(around, kernel, writers, reading, gate):  # noqa: ANN001
        kernel.hold.clear()
        around.after_read(5, 0, 4 * KiB, len(FILE), 0)
        await trio.to_thread.run_sync(kernel.entered.wait, 10)
        with trio.move_on_after(0.3) as waited:
            await around.quiesce(5)
        assert waited.cancelled_caught, "the open went on while the push was landing"
        kernel.hold.set()
        with trio.fail_after(10):
            await around.quiesce(5)
        assert kernel.stored == [(5, 0, AROUND)]
    run(scenario)


def test_an_invalidation_during_a_push_is_done_again_after_it() -> None:
    async def scenario(around, kernel, writers, reading, gate):  # noqa: ANN001
        kernel.hold.clear()
        around.after_read(5, 0, 4 * KiB, len(FILE), 0)
        await trio.to_thread.run_sync(kernel.entered.wait, 10)
        around.invalidated(5)  # another device's new version, while the old bytes land
        kernel.hold.set()
        await settle()
    kernel = run(scenario)
    assert kernel.stored == [(5, 0, AROUND)]
    assert kernel.invalidated == [5]
