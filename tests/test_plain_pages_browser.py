"""In Chromium at 1440x900: the version history's diff fits its panel in the report workspace (no table
wider than its box), and the login form's labels and fields line up."""
from __future__ import annotations

import os

import pytest
from playwright.sync_api import expect

from tests.test_reports_support import drafted_report
from webapp.reports import services

pytestmark = pytest.mark.browser


def shot(page, name: str) -> None:
    folder = os.environ.get("PATHALIGN_SCREENSHOTS")
    if folder:
        page.screenshot(path=f"{folder}/{name}.png", full_page=True)


def test_version_history_diff_fits_its_panel(cast, case_factory, page_for):
    case = case_factory(assigned_to=cast.path1)
    long_line = ("Sections show colonic mucosa with a tubular adenoma with low-grade dysplasia; the lesion measures "
                 "7 mm and is completely excised, margins clear by more than 2 mm. ") * 3
    report = drafted_report(case, cast.path1, text=long_line)
    section = report.sections.get()
    services.save_section(section, long_line.replace("low-grade", "high-grade"), section.version, cast.path1)
    page = page_for(cast.path1)
    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(f"/cases/{case.pk}/workspace/")
    page.get_by_role("button", name="History").first.click()
    panel = page.locator(".history-panel").first
    expect(panel.locator(".inline-diff").first).to_be_visible()
    expect(panel.locator(".inline-diff ins.diff_add").first).to_have_text("high-grade")
    sizes = panel.evaluate("""(el) => ({panel: el.clientWidth,
        widest: Math.max(...[...el.querySelectorAll('*')].map((c) => c.getBoundingClientRect().right))
                - el.getBoundingClientRect().left, scroll: el.scrollWidth})""")
    assert sizes["scroll"] <= sizes["panel"] + 1 and sizes["widest"] <= sizes["panel"] + 2, sizes
    panel.scroll_into_view_if_needed()
    shot(page, "history-diff")


def test_login_form_is_aligned(page_for):
    page = page_for(None)
    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto("/login/")
    boxes = [page.locator(selector).bounding_box() for selector in
             ("input[name=username]", "input[name=password]", "button[type=submit]", "label[for=id_username]")]
    lefts = {round(box["x"]) for box in boxes}
    assert len(lefts) == 1, boxes  # labels, fields and the button share one left edge
    assert round(boxes[0]["width"]) == round(boxes[1]["width"]) == round(boxes[2]["width"])
    shot(page, "login")
