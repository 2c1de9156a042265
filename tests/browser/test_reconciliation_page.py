"""The reconciliation page (/reconciliation) in headless Chromium: a PACS administrator
sees what needs a person, links, merges, undoes a merge, and nothing is run from data."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser, Dialog, expect

from tests.browser.conftest import Traffic, signed_in_page
from tests.conftest import Netpacs
from tests.hl7.conftest import MllpClient, adt
from tests.hl7.test_regional_record import send_study

NUMBER = "9434765919"
EVIL = "<script>alert(1)</script>^EVIL"


def _registrations(server: Netpacs) -> None:
    client = MllpClient(server.mllp_port)
    try:
        sent = [
            # One NHS number, two birth dates at two trusts: a conflict.
            adt(
                "A04",
                "P1",
                f"RXC0000701^^^RXC^MR~{NUMBER}^^^NHS^NH",
                name="LANE^LOIS",
                birth_date="19710707",
                sex="F",
            ),
            adt(
                "A04",
                "P2",
                f"ESH0701^^^RTP^MR~{NUMBER}^^^NHS^NH",
                name="LANE^LOIS",
                birth_date="19170707",
                sex="F",
                facility="RTP",
            ),
            # Two hospital numbers of East Sussex with one NHS number: a duplicate.
            adt(
                "A04",
                "P3",
                "RXC0000801^^^RXC^MR~4010232137^^^NHS^NH",
                name="KENT^CLARK",
                birth_date="19380418",
                sex="M",
            ),
            adt(
                "A04",
                "P4",
                "RXC0000899^^^RXC^MR~4010232137^^^NHS^NH",
                name="KENT^CLARK",
                birth_date="19380418",
                sex="M",
            ),
            adt("A04", "P5", "RXC0000901^^^RXC^MR", name="GOOD^NAME", birth_date="20000101"),
        ]
        for message in sent:
            assert client.send(message).code == "AA"
    finally:
        client.close()


def test_administrator_links_a_conflict_merges_a_duplicate_and_undoes_the_merge(
    netpacs: Netpacs, browser: Browser, tmp_path: Path
) -> None:
    _registrations(netpacs)
    send_study(
        netpacs,
        tmp_path / "a",
        aet="EDGH_CT1",
        patient_id="RXC0000801",
        issuer="RXC",
        name="KENT^CLARK",
    )
    send_study(
        netpacs,
        tmp_path / "b",
        aet="EDGH_CT1",
        patient_id="RXC0000899",
        issuer="RXC",
        name="KENT^CLARK",
    )
    # A study whose name is markup, disagreeing with the ADT record: shown as text.
    send_study(
        netpacs, tmp_path / "c", aet="EDGH_CT1", patient_id="RXC0000901", issuer="RXC", name=EVIL
    )
    page = signed_in_page(browser, netpacs)
    traffic = Traffic()
    traffic.attach(page)
    dialogs: list[Dialog] = []
    page.on("dialog", lambda d: (dialogs.append(d), d.dismiss()))

    page.goto(f"{netpacs.base_url}/reconciliation")
    rows = page.locator("#items tbody tr")
    expect(rows).to_have_count(3)
    conflict = page.locator("tr[data-kind=nhs-number-conflict]")
    expect(conflict).to_contain_text("ESH0701")
    expect(conflict).to_contain_text("943 476 5919")
    expect(conflict).to_contain_text("birth date 1917-07-07 differs from 1971-07-07")
    mismatch = page.locator("tr[data-kind=study-mismatch]")
    expect(mismatch).to_contain_text(EVIL)
    assert dialogs == []

    conflict.get_by_placeholder("Note (why)").fill("PAS typo in year, confirmed by phone")
    conflict.get_by_role("button", name="Link (same person)").click()
    expect(page.get_by_role("status")).to_contain_text("link")
    expect(rows).to_have_count(2)

    duplicate = page.locator("tr[data-kind=duplicate-registration]")
    expect(duplicate).to_contain_text("RXC0000899")
    duplicate.get_by_role("button", name="Merge into the other record").click()
    expect(page.get_by_role("status")).to_contain_text("merge")
    studies = netpacs.http.get(
        f"{netpacs.dicomweb_url}/studies",
        params={"PatientID": "RXC0000801", "IssuerOfPatientID": "RXC"},
    ).json()
    assert len(studies) == 2

    page.locator("#merges").get_by_role("button", name="Undo merge").click()
    expect(page.get_by_role("status")).to_contain_text("undone")
    expect(page.locator("tr[data-kind=duplicate-registration]")).to_have_count(1)
    studies = netpacs.http.get(
        f"{netpacs.dicomweb_url}/studies",
        params={"PatientID": "RXC0000801", "IssuerOfPatientID": "RXC"},
    ).json()
    assert len(studies) == 1

    page.goto(f"{netpacs.base_url}/reconciliation?show=resolved")
    resolved = page.locator("#items tbody tr")
    expect(resolved).to_have_count(1)
    expect(resolved).to_contain_text("link by rxc.admin")
    expect(resolved).to_contain_text("PAS typo in year, confirmed by phone")
    assert traffic.errors == [], traffic.report()
    assert dialogs == []


def test_resolving_an_item_already_resolved_says_so_on_the_page(
    netpacs: Netpacs, browser: Browser
) -> None:
    _registrations(netpacs)
    page = signed_in_page(browser, netpacs)
    page.goto(f"{netpacs.base_url}/reconciliation")
    conflict = page.locator("tr[data-kind=nhs-number-conflict]")
    item_id = conflict.get_attribute("id", timeout=10_000)
    assert item_id is not None
    # Someone else resolves it through the API while the page is open.
    done = netpacs.http.post(
        f"{netpacs.base_url}/api/reconciliation/{item_id.removeprefix('item-')}/resolve",
        json={"action": "reject"},
    )
    assert done.status_code == 200
    conflict.get_by_role("button", name="Link (same person)").click()
    expect(page.get_by_role("alert")).to_contain_text("resolved already (reject")
