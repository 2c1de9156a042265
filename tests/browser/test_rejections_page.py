"""The administrator's rejections page (issue 15): a rejection note sent from a modality
is listed, and undoing it on the page brings its images back."""

from __future__ import annotations

from pathlib import Path

import pydicom
from playwright.sync_api import Browser, expect

from tests.adapters.test_rejection_notes import _qido_instances, _storescu, rejection_note
from tests.browser.conftest import signed_in_page
from tests.conftest import Netpacs
from tests.factories import write, write_series


def test_an_admin_undoes_a_rejection_on_the_page_and_the_images_come_back(
    module_netpacs: Netpacs, browser: Browser, tmp_path: Path
) -> None:
    server = module_netpacs
    paths = write_series(tmp_path / "ct", 2, PatientID="REJ0201", IssuerOfPatientID="RXC")
    server.store(*paths, aet="EDGH_CT1")
    images = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    study = str(images[0].StudyInstanceUID)
    note = rejection_note(images[:1])
    assert "Success" in _storescu(server, write(note, tmp_path / "note.dcm"), "EDGH_CT1")
    assert len(_qido_instances(server, study)) == 1

    page = signed_in_page(browser, server, "rxc.admin")
    page.goto(f"{server.base_url}/rejections")
    row = page.locator("tr", has_text=study)
    expect(row).to_contain_text("Rejected for Quality Reasons (113001)")
    expect(row).to_contain_text("1 of 1")
    row.get_by_role("textbox").fill("the radiographer rejected the wrong image")
    row.get_by_role("button", name="Undo").click()
    expect(page.get_by_role("status")).to_contain_text("1 instances restored")
    expect(page.locator("tr", has_text=study)).to_contain_text("undone by rxc.admin")
    assert len(_qido_instances(server, study)) == 2
