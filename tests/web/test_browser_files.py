"""What a person does with files in the page, beyond test_browser.py, in a real headless
Chromium against a real server and a mounted device (issue 17, must haves 3 to 6):
organise (sort, new folder, rename, move), drop files onto the page, play audio and
video (a seek is a Range request the server answers 206), and hard links made on the
device: one file shown under each of its names, with its size, content and versions,
and a name deleted in the page that takes nothing to the trash.

The tests run in order on one signed-in page and one mounted device (conftest.py).
"""

from __future__ import annotations

import io
import os
import time
import wave
from pathlib import Path

import pytest

from tests.harness import MountProcess, ServerProcess
from tests.web.conftest import Account, screenshot
from tests.web.pages import pump_until, row, sign_in, upload_finished

VIDEO_SECONDS = 8
VIDEO_FPS = 10
MOMENTS: dict[str, float] = {}
"""Times between tests, for the point-in-time restore at the end."""


def webm(seconds: int = VIDEO_SECONDS) -> bytes:
    """A real VP8 WebM (what Chromium plays without proprietary codecs), big enough
    (noise: about 1 MB a second) that the browser cannot have it all before a seek."""
    import av  # a test dependency (pyproject: test): FFmpeg's encoders through PyAV

    out_buf = io.BytesIO()
    with av.open(out_buf, "w", format="webm") as out:
        stream = out.add_stream("libvpx", rate=VIDEO_FPS, options={"deadline": "realtime", "cpu-used": "8",
                                                                   "qmin": "0", "qmax": "8"})
        stream.width, stream.height, stream.pix_fmt, stream.bit_rate = 320, 240, "yuv420p", 40_000_000
        for _ in range(seconds * VIDEO_FPS):
            frame = av.VideoFrame(320, 240, "yuv420p")
            for plane in frame.planes:
                plane.update(os.urandom(plane.buffer_size))
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return out_buf.getvalue()


def wav(seconds: float = 1.5, rate: int = 8000) -> bytes:
    """PCM audio: a rising tone."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(rate)
        w.writeframes(bytes((i * (1 + i // 2000)) % 256 for i in range(int(seconds * rate))))
    return buf.getvalue()


def names_in_order(page) -> list[str]:  # noqa: ANN001
    return page.locator("#listing tbody tr").evaluate_all("rows => rows.map(r => r.dataset.name)")


def open_folder(page, web_server: ServerProcess, *path: str) -> None:  # noqa: ANN001
    page.goto(web_server.url + "/#/")
    for name in path:
        row(page, name).locator("a.name").click()
        page.wait_for_selector(f".crumbs .crumb.current:text-is('{name}')")


@pytest.fixture(scope="module")
def work(device: MountProcess) -> Path:
    """Three files of three sizes, written on the device."""
    folder = device.path / "Work"
    folder.mkdir()
    (folder / "small.txt").write_bytes(b"ten bytes!")
    (folder / "medium.txt").write_bytes(b"m" * 2000)
    (folder / "large.txt").write_bytes(b"L" * 300_000)
    device.sync()
    return folder


def test_sort_new_folder_rename_and_move(page, acct: Account, web_server: ServerProcess, work: Path,  # noqa: ANN001
                                         device: MountProcess) -> None:
    sign_in(page, acct.name, acct.password)
    open_folder(page, web_server, "Work")
    row(page, "large.txt").wait_for()
    page.click("#listing th.col-size button")
    assert names_in_order(page) == ["small.txt", "medium.txt", "large.txt"]
    assert page.get_attribute("#listing th.col-size", "aria-sort") == "ascending"
    page.click("#listing th.col-size button")
    assert names_in_order(page) == ["large.txt", "medium.txt", "small.txt"]
    page.click("#listing th.col-name button")
    assert names_in_order(page) == ["large.txt", "medium.txt", "small.txt"]
    # A new folder comes first (folders before files, whatever the order).
    page.click("#new-folder")
    page.fill("dialog.modal input[name=name]", "Archive")
    page.click("dialog.modal button[type=submit]")
    row(page, "Archive").wait_for()
    assert names_in_order(page)[0] == "Archive"
    # Rename, to a name that needs care.
    row(page, "medium.txt").locator("select.menu").select_option("rename")
    page.fill("dialog.modal input[name=name]", "médium & <co>.txt")
    page.click("dialog.modal button[type=submit]")
    row(page, "médium & <co>.txt").wait_for()
    assert not row(page, "medium.txt").count()
    # Move by a path.
    row(page, "large.txt").locator("select.menu").select_option("move")
    page.fill("dialog.modal input[name=path]", "/Work/Archive")
    page.click("dialog.modal button[type=submit]")
    row(page, "large.txt").wait_for(state="detached")
    device.sync()
    assert sorted(p.name for p in work.iterdir()) == ["Archive", "médium & <co>.txt", "small.txt"]
    assert (work / "Archive" / "large.txt").read_bytes() == b"L" * 300_000
    assert (work / "médium & <co>.txt").read_bytes() == b"m" * 2000


def test_drop_files_onto_the_page(page, device: MountProcess, work: Path) -> None:  # noqa: ANN001
    """Files dropped anywhere on the open folder are uploaded into it (a drop the page
    makes itself: a test cannot drag from the desktop; folders come through the same
    walk in upload.js, tested with the folder picker in test_browser.py)."""
    time.sleep(1.1)  # the restore's moment (whole seconds in the page) is after the moves above
    MOMENTS["before the drop"] = time.time()
    dropped = page.evaluate_handle("""() => {
        const dt = new DataTransfer();
        dt.items.add(new File(["dropped on the page\\n"], "dropped.txt", { type: "text/plain" }));
        dt.items.add(new File([new Uint8Array(70000).fill(7)], "sevens.bin"));
        return dt;
    }""")
    page.dispatch_event("body", "dragover", {"dataTransfer": dropped})
    assert "dropping" in page.get_attribute("body", "class")
    page.dispatch_event("body", "drop", {"dataTransfer": dropped})
    upload_finished(page, 2)
    row(page, "dropped.txt").wait_for()
    row(page, "sevens.bin").wait_for()
    device.sync()
    assert (work / "dropped.txt").read_text() == "dropped on the page\n"
    assert (work / "sevens.bin").read_bytes() == b"\7" * 70000


def test_audio_and_video_play_and_a_seek_is_a_range_request(page, device: MountProcess,  # noqa: ANN001
                                                            web_server: ServerProcess) -> None:
    media = device.path / "Media"
    media.mkdir()
    clip = webm()
    (media / "clip.webm").write_bytes(clip)
    (media / "tone.wav").write_bytes(wav())
    device.sync()
    open_folder(page, web_server, "Media")
    answers: list[tuple[str | None, int, str]] = []
    page.on("response", lambda r: "/content" in r.url and answers.append(
        (r.request.headers.get("range"), r.status, r.headers.get("content-range", ""))))

    row(page, "tone.wav").locator("button.name").click()
    audio = page.locator("#preview audio")
    audio.wait_for()
    pump_until(page, lambda: audio.evaluate("a => a.readyState") >= 1, timeout=20, what="the audio's metadata")
    assert abs(audio.evaluate("a => a.duration") - 1.5) < 0.05
    page.click("#close-overlay")

    answers.clear()
    row(page, "clip.webm").locator("button.name").click()
    video = page.locator("#preview video")
    video.wait_for()
    pump_until(page, lambda: video.evaluate("v => v.readyState") >= 1, timeout=30, what="the video's metadata")
    assert abs(video.evaluate("v => v.duration") - VIDEO_SECONDS) < 0.5
    assert video.evaluate("v => [v.videoWidth, v.videoHeight]") == [320, 240]
    video.evaluate("v => { v.currentTime = 7; }")
    pump_until(page, lambda: video.evaluate("v => !v.seeking && v.readyState >= 2"), timeout=30,
               what="the video seeked and showing a frame")
    assert abs(video.evaluate("v => v.currentTime") - 7) < 0.5
    # What the browser asked: parts of the file (Range), answered 206, one of them well
    # past the start: it never needed the whole file first.
    starts = [int(asked.split("=")[1].split("-")[0]) for asked, status, _ in answers if asked and status == 206]
    assert starts and max(starts) > len(clip) // 2, answers
    assert all(got.endswith(f"/{len(clip)}") for asked, status, got in answers if status == 206), answers
    page.click("#close-overlay")


def test_hard_links_made_on_the_device(page, device: MountProcess, web_server: ServerProcess,  # noqa: ANN001
                                       work: Path) -> None:
    """One file, two names: each shows the file's size and content with a '2 names'
    badge; an edit through either name shows on both; deleting one name in the page
    leaves the file under the other and puts nothing in the trash."""
    os.link(work / "small.txt", work / "Archive" / "small-link.txt")
    device.sync()
    open_folder(page, web_server, "Work")
    row(page, "small.txt").locator(".badge.names:text-is('2 names')").wait_for()
    page.click(".crumbs a.crumb:text-is('My drive')")
    open_folder(page, web_server, "Work", "Archive")
    link = row(page, "small-link.txt")
    link.locator(".badge.names:text-is('2 names')").wait_for()
    assert link.locator("td.col-size").inner_text() == "10 B"
    assert not row(page, "large.txt").locator(".badge").count()
    screenshot(page, "hard-links")
    link.locator("button.name").click()
    assert page.inner_text("#preview-text") == "ten bytes!"
    page.click("#close-overlay")
    link.locator("select.menu").select_option("versions")
    page.wait_for_selector("#versions tbody tr[data-rev='1']")
    assert "on laptop" in page.inner_text("#versions tbody tr[data-rev='1']")
    page.click("#close-overlay")
    # Written through the other name, on the device: this folder shows it by itself.
    (work / "small.txt").write_bytes(b"y" * 2500)
    link.locator("td.col-size:text-is('2.5 KB')").wait_for(timeout=15_000)
    with page.expect_download() as caught:
        link.locator("a.action:text-is('Download')").click()
    assert caught.value.suggested_filename == "small-link.txt"
    assert Path(caught.value.path()).read_bytes() == b"y" * 2500
    # Deleting this name: the page says the file stays, and it does.
    link.locator("select.menu").select_option("delete")
    assert "Only this name goes" in page.inner_text("dialog.modal")
    page.click("dialog.modal button[type=submit]")
    link.wait_for(state="detached")
    device.sync()
    assert (work / "small.txt").read_bytes() == b"y" * 2500 and os.stat(work / "small.txt").st_nlink == 1
    assert not (work / "Archive" / "small-link.txt").exists()
    page.click("nav#nav a[data-view='trash']")
    page.wait_for_selector("#trash td.empty")
    open_folder(page, web_server, "Work")
    row(page, "small.txt").locator("td.col-size:text-is('2.5 KB')").wait_for()
    assert not row(page, "small.txt").locator(".badge").count()
    assert not page.errors, page.errors


def test_restore_a_folder_to_a_moment(page, device: MountProcess, web_server: ServerProcess,  # noqa: ANN001
                                      work: Path) -> None:
    """Work as it was before the drop: the dropped files go to the trash, small.txt has its
    first content again (the server's point-in-time restore, as `cloudfs restore --at`)."""
    open_folder(page, web_server, "Work")
    page.click("#restore-folder")
    page.fill("dialog.modal input[name=at]",
              time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(MOMENTS["before the drop"])))
    page.click("dialog.modal button[type=submit]")
    row(page, "dropped.txt").wait_for(state="detached")
    assert "1 reverted" in page.inner_text("#toasts") and "2 made since moved to the trash" in page.inner_text("#toasts")
    row(page, "small.txt").locator("td.col-size:text-is('10 B')").wait_for()
    device.sync()
    assert sorted(p.name for p in work.iterdir()) == ["Archive", "médium & <co>.txt", "small.txt"]
    assert (work / "small.txt").read_bytes() == b"ten bytes!"
    page.click("nav#nav a[data-view='trash']")
    page.wait_for_selector("#trash tbody tr[data-name='dropped.txt']")
    page.wait_for_selector("#trash tbody tr[data-name='sevens.bin']")
    assert not page.errors, page.errors
