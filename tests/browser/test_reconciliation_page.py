"""The reconciliation page (/reconciliation) in headless Chromium: a PACS administrator
sees what needs a person, links, merges, undoes a merge, and nothing is run from data."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Dialog, expect

from tests.browser.conftest import Traffic, signed_in_page
from tests.conftest import Netpacs
from tests.hl7.conftest import MllpClient, adt
from tests.hl7.test_regional_record import send_study, valid_nhs

EVIL = "<script>alert(1)</script>^EVIL"


@pytest.fixture
def netpacs(module_netpacs: Netpacs) -> Netpacs:
    """One server for the module: each test registers its own people (``_registrations``)
    and looks only at their items."""
    return module_netpacs


@dataclass(frozen=True)
class People:
    """The hospital and NHS numbers that one test registers."""

    lane: str  # LANE^LOIS at East Sussex (RXC) ...
    lane_rtp: str  # ... and at Surrey and Sussex (RTP), born 54 years apart: a conflict
    lane_nhs: str
    kent: str  # KENT^CLARK twice at East Sussex with one NHS number: a duplicate
    kent_again: str
    kent_nhs: str
    good: str  # GOOD^NAME, nothing to reconcile

    @property
    def items(self) -> re.Pattern[str]:
        """Matches the rows of this test's items (any record of these people)."""
        return re.compile("|".join((self.lane, self.kent, self.kent_again, self.good)))


def _registrations(server: Netpacs, tag: str, lane_nhs: str, kent_nhs: str) -> People:
    people = People(
        lane=f"RXC{tag}0701",
        lane_rtp=f"ESH{tag}0701",
        lane_nhs=lane_nhs,
        kent=f"RXC{tag}0801",
        kent_again=f"RXC{tag}0899",
        kent_nhs=kent_nhs,
        good=f"RXC{tag}0901",
    )
    client = MllpClient(server.mllp_port)
    try:
        sent = [
            # One NHS number, two birth dates at two trusts: a conflict.
            adt(
                "A04",
                f"{tag}P1",
                f"{people.lane}^^^RXC^MR~{lane_nhs}^^^NHS^NH",
                name="LANE^LOIS",
                birth_date="19710707",
                sex="F",
            ),
            adt(
                "A04",
                f"{tag}P2",
                f"{people.lane_rtp}^^^RTP^MR~{lane_nhs}^^^NHS^NH",
                name="LANE^LOIS",
                birth_date="19170707",
                sex="F",
                facility="RTP",
            ),
            # Two hospital numbers of East Sussex with one NHS number: a duplicate.
            adt(
                "A04",
                f"{tag}P3",
                f"{people.kent}^^^RXC^MR~{kent_nhs}^^^NHS^NH",
                name="KENT^CLARK",
                birth_date="19380418",
                sex="M",
            ),
            adt(
                "A04",
                f"{tag}P4",
                f"{people.kent_again}^^^RXC^MR~{kent_nhs}^^^NHS^NH",
                name="KENT^CLARK",
                birth_date="19380418",
                sex="M",
            ),
            adt(
                "A04",
                f"{tag}P5",
                f"{people.good}^^^RXC^MR",
                name="GOOD^NAME",
                birth_date="20000101",
            ),
        ]
        for message in sent:
            assert client.send(message).code == "AA"
    finally:
        client.close()
    return people


def test_administrator_links_a_conflict_merges_a_duplicate_and_undoes_the_merge(
    netpacs: Netpacs, browser: Browser, tmp_path: Path
) -> None:
    people = _registrations(netpacs, "1", lane_nhs="9434765919", kent_nhs="4010232137")
    for folder, patient_id in (("a", people.kent), ("b", people.kent_again)):
        send_study(
            netpacs,
            tmp_path / folder,
            aet="EDGH_CT1",
            patient_id=patient_id,
            issuer="RXC",
            name="KENT^CLARK",
        )
    # A study whose name is markup, disagreeing with the ADT record: shown as text.
    send_study(
        netpacs, tmp_path / "c", aet="EDGH_CT1", patient_id=people.good, issuer="RXC", name=EVIL
    )
    page = signed_in_page(browser, netpacs)
    traffic = Traffic()
    traffic.attach(page)
    dialogs: list[Dialog] = []
    page.on("dialog", lambda d: (dialogs.append(d), d.dismiss()))

    page.goto(f"{netpacs.base_url}/reconciliation")
    rows = page.locator("#items tbody tr", has_text=people.items)
    expect(rows).to_have_count(3)
    conflict = page.locator("tr[data-kind=nhs-number-conflict]", has_text=people.lane)
    expect(conflict).to_contain_text(people.lane_rtp)
    expect(conflict).to_contain_text("943 476 5919")
    expect(conflict).to_contain_text("birth date 1917-07-07 differs from 1971-07-07")
    mismatch = page.locator("tr[data-kind=study-mismatch]", has_text=people.good)
    expect(mismatch).to_contain_text(EVIL)
    assert dialogs == []

    conflict.get_by_placeholder("Note (why)").fill("PAS typo in year, confirmed by phone")
    conflict.get_by_role("button", name="Link (same person)").click()
    expect(page.get_by_role("status")).to_contain_text("link")
    expect(rows).to_have_count(2)

    duplicate = page.locator("tr[data-kind=duplicate-registration]", has_text=people.kent)
    expect(duplicate).to_contain_text(people.kent_again)
    duplicate.get_by_role("button", name="Merge into the other record").click()
    expect(page.get_by_role("status")).to_contain_text("merge")
    kents = {"PatientID": people.kent, "IssuerOfPatientID": "RXC"}
    assert len(netpacs.http.get(f"{netpacs.dicomweb_url}/studies", params=kents).json()) == 2

    merge = page.locator("#merges tr", has_text=people.kent_again)
    merge.get_by_role("button", name="Undo merge").click()
    expect(page.get_by_role("status")).to_contain_text("undone")
    expect(duplicate).to_have_count(1)
    assert len(netpacs.http.get(f"{netpacs.dicomweb_url}/studies", params=kents).json()) == 1

    page.goto(f"{netpacs.base_url}/reconciliation?show=resolved")
    resolved = page.locator("#items tbody tr", has_text=people.items)
    expect(resolved).to_have_count(1)
    expect(resolved).to_contain_text("link by rxc.admin")
    expect(resolved).to_contain_text("PAS typo in year, confirmed by phone")
    assert traffic.errors == [], traffic.report()
    assert dialogs == []


def test_resolving_an_item_already_resolved_says_so_on_the_page(
    netpacs: Netpacs, browser: Browser
) -> None:
    people = _registrations(
        netpacs, "2", lane_nhs=valid_nhs("943476592"), kent_nhs=valid_nhs("401023214")
    )
    page = signed_in_page(browser, netpacs)
    page.goto(f"{netpacs.base_url}/reconciliation")
    conflict = page.locator("tr[data-kind=nhs-number-conflict]", has_text=people.lane)
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
