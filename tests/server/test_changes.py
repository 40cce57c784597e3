"""The change feed: paging, long-poll wake-ups, retention (410) and shutdown."""

from __future__ import annotations

import concurrent.futures
import signal
import threading
import time

import httpx
import pytest

from tests.conftest import Api, start_server
from tests.server.helpers import changes, cursor, metric, mkdir, put_file


def test_pages_with_has_more(alice):
    start = cursor(alice)
    d = mkdir(alice, alice.root_id, "feed")
    for i in range(9):
        mkdir(alice, d["id"], f"e{i}")
    seen, at = [], start
    for _ in range(10):
        page = changes(alice, at, limit=4)
        seen += [c["node"]["name"] for c in page["changes"]]
        assert page["cursor"] >= at
        at = page["cursor"]
        if not page["has_more"]:
            break
    assert seen == ["feed"] + [f"e{i}" for i in range(9)]
    assert changes(alice, at) == {"changes": [], "cursor": at, "has_more": False}


def test_long_poll_wakes_on_commit(alice):
    at = cursor(alice)
    result: dict = {}

    def poll() -> None:
        t0 = time.monotonic()
        result["body"] = alice.get("/changes", params={"cursor": at, "wait": 20}).json()
        result["waited"] = time.monotonic() - t0

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(0.5)
    node = put_file(alice, "/wake-up")
    waiter.join(timeout=25)
    assert not waiter.is_alive()
    assert [c["node"]["id"] for c in result["body"]["changes"]] == [node["id"]]
    assert 0.4 < result["waited"] < 5


def test_long_poll_times_out_empty(alice):
    at = cursor(alice)
    t0 = time.monotonic()
    body = changes(alice, at, wait=1)
    assert body["changes"] == [] and body["cursor"] == at
    assert 0.9 < time.monotonic() - t0 < 5



def test_a_long_poll_that_times_out_reads_the_journal_once(alice):
    """An idle device costs one journal read per long-poll, not two: one that nothing
    woke answers with the empty page it read first (nothing can have landed since
    without waking it)."""
    at = cursor(alice)
    before = metric(alice.get("/metrics").text, "cloudfs_changes_reads_total")
    assert changes(alice, at, wait=1) == {"changes": [], "cursor": at, "has_more": False}
    assert metric(alice.get("/metrics").text, "cloudfs_changes_reads_total") - before == 1



def test_an_idle_devices_next_long_poll_reads_nothing_and_still_wakes(alice):
    """The next long-poll from a cursor a read found nothing after parks without a
    journal read (the notifier remembers the empty page until the owner's next
    change), and a commit still wakes it; a poll without wait always reads."""
    at = cursor(alice)
    assert changes(alice, at, wait=1)["changes"] == []
    before = metric(alice.get("/metrics").text, "cloudfs_changes_reads_total")
    assert changes(alice, at, wait=1) == {"changes": [], "cursor": at, "has_more": False}
    assert metric(alice.get("/metrics").text, "cloudfs_changes_reads_total") == before

    result: dict = {}
    waiter = threading.Thread(target=lambda: result.setdefault("body", changes(alice, at, wait=20)))
    waiter.start()
    time.sleep(0.5)
    node = put_file(alice, "/wakes-the-idle")
    waiter.join(timeout=25)
    assert [c["node"]["id"] for c in result["body"]["changes"]] == [node["id"]]
    reads = metric(alice.get("/metrics").text, "cloudfs_changes_reads_total")
    assert [c["node"]["id"] for c in changes(alice, at)["changes"]] == [node["id"]]
    assert metric(alice.get("/metrics").text, "cloudfs_changes_reads_total") == reads + 1

def test_long_polls_that_nothing_wakes_end_spread_over_the_last_fifth_of_their_wait(alice):
    """Devices that reconnected together must not time out together forever: each
    long-poll of 5 s or more is held for a random 80-100 % of its wait."""
    at = cursor(alice)

    def poll(_: int) -> tuple[float, dict]:
        t0 = time.monotonic()
        body = alice.get("/changes", params={"cursor": at, "wait": 5}).json()
        return time.monotonic() - t0, body

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(poll, range(12)))
    assert all(body == {"changes": [], "cursor": at, "has_more": False} for _, body in results), results
    held = sorted(t for t, _ in results)
    assert held[0] > 3.9, held  # never before 80 % of the wait
    assert held[0] < 4.8, held  # not all the full 5 s (with the spread, all 12 past 4.8 s: 0.2 ** 12)

def test_cursor_from_the_future_is_gone(alice):
    r = alice.get("/changes", params={"cursor": 10**15})
    assert r.status_code == 410 and r.json()["error"] == "cursor_expired"


@pytest.mark.parametrize("kind", ["sqlite-local"])
def test_pruned_history_answers_410(kind, tmp_path, request):
    with start_server(kind, tmp_path, request, ["--journal-retain", "3", "--prune-interval", "0.2"]) as srv:
        with Api(srv, srv.add_user("pruned")) as api:
            start = cursor(api)
            for i in range(8):
                mkdir(api, api.root_id, f"d{i}")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                r = api.get("/changes", params={"cursor": start})
                if r.status_code == 410:
                    break
                time.sleep(0.2)
            assert r.status_code == 410, r.text
            assert r.json()["field"] == "cursor"
            newest = cursor(api)
            recent = api.get("/changes", params={"cursor": newest - 2})
            assert recent.status_code == 200 and len(recent.json()["changes"]) == 2


def test_sigterm_answers_long_polls_and_exits_zero(tmp_path, request):
    with start_server("sqlite-local", tmp_path, request) as srv:
        token = srv.add_user("sleepy")
        client = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        at = client.get("/me").json()["cursor"]
        result: dict = {}

        def poll() -> None:
            r = client.get("/changes", params={"cursor": at, "wait": 60})
            result["status"] = r.status_code

        waiter = threading.Thread(target=poll)
        waiter.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=15) == 0
        waiter.join(timeout=5)
        assert result.get("status") == 200, "the in-flight long-poll was answered, not dropped"
        assert time.monotonic() - t0 < 10
        client.close()
