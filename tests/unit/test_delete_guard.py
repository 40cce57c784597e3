"""The mass-delete guard's arithmetic: what counts as one burst, when it holds."""

from cloudfs.backend.sync.delete_guard import FRACTION_FLOOR, SETTLE_S, WINDOW_S, DeleteGuard


def test_ordinary_deletes_go_and_a_burst_is_held() -> None:
    guard = DeleteGuard(max_files=1000, fraction=0.25)
    assert guard.check(queued_deletes=50, total_files=100_000, now=0)
    assert not guard.check(queued_deletes=1001, total_files=100_000, now=0) and guard.held == 1001


def test_deletes_sent_within_the_window_count_with_the_queued_ones() -> None:
    guard = DeleteGuard(max_files=1000)
    guard.record_sent(900, now=0)
    assert not guard.check(queued_deletes=200, total_files=10**6, now=30)
    assert guard.check(queued_deletes=200, total_files=10**6, now=WINDOW_S + 1)  # the first 900 are old news


def test_a_quarter_of_a_small_drive_is_held_but_not_a_handful() -> None:
    guard = DeleteGuard(max_files=1000, fraction=0.25)
    assert guard.check(queued_deletes=FRACTION_FLOOR - 1, total_files=200, now=0)  # too few to judge by share
    assert not guard.check(queued_deletes=FRACTION_FLOOR, total_files=200, now=0)


def test_confirm_lets_the_held_ones_go_then_the_guard_arms_again() -> None:
    guard = DeleteGuard(max_files=10)
    assert not guard.check(queued_deletes=11, total_files=10**6, now=0)
    guard.confirm()
    assert guard.held == 0 and guard.check(queued_deletes=11, total_files=10**6, now=0)
    guard.drained()
    assert not guard.check(queued_deletes=11, total_files=10**6, now=0)


def test_off_and_settling() -> None:
    assert DeleteGuard(max_files=0).check(queued_deletes=10**6, total_files=1, now=0)
    guard = DeleteGuard()
    assert not guard.due({"op": "delete", "t": 100.0}, now=100.0 + SETTLE_S / 2)
    assert guard.due({"op": "delete", "t": 100.0}, now=100.0 + SETTLE_S + 0.01)
    assert guard.due({"op": "delete"})  # queued by a release without the guard
