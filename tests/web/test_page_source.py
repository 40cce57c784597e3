"""Static guards on the page's own files (issue 17, item 8): no way for text from the
server to become markup, and every asset the pages name is one the server serves."""

from __future__ import annotations

import re
from pathlib import Path

from cloudfs.server.web import ASSETS, WEB

SINKS = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|srcdoc|"
                   r"setAttribute\(\s*['\"]on")


def test_no_markup_sinks_in_the_page_scripts() -> None:
    for script in WEB.glob("*.js"):
        found = [line for line in script.read_text().splitlines() if SINKS.search(line)]
        assert not found, f"{script.name}: {found}"


def test_every_asset_the_pages_name_is_served() -> None:
    for page in ("index.html", "share.html"):
        html = (WEB / page).read_text()
        named = re.findall(r'(?:src|href)="/web/([^"]+)"', html)
        assert named, page
        for name in named:
            assert name in ASSETS and (WEB / name).is_file(), name
        assert "<script>" not in html and " style=" not in html and " on" not in re.sub(r'"[^"]*"', '""', html)


def test_the_package_ships_the_page() -> None:
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"cloudfs.server" = ["web/*.html", "web/*.js", "web/*.css", "web/*.svg"]' in pyproject
