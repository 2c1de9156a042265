"""The reporting pages in headless Chromium: the worklist, the reporting page beside the
viewer, the turnaround dashboard, and report status in the study list (issue 6)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pydicom
from playwright.sync_api import Browser, Locator, Page, expect
from pydicom.dataset import Dataset

from netpacs.synthetic import write_ct_series
from tests.adapters.test_worklist import worklist
from tests.browser.conftest import Traffic, signed_in_page
from tests.conftest import Netpacs
from tests.hl7.conftest import MllpClient, order
from tests.hl7.test_regional_record import valid_nhs
from tests.http.conftest import storescu

FINDINGS = "Small simple cyst in the left kidney. No acute abnormality."


def send(
    server: Netpacs,
    folder: Path,
    *,
    aet: str,
    patient_id: str,
    issuer: str,
    nhs: str,
    seed: int,
    **attributes: Any,
) -> str:
    """A 2-slice CT of DOE^JANE (``seed`` sets its date) with her NHS number in Other
    Patient IDs, as a modality copies it from the worklist, sent by storescu from
    ``aet``; its Study Instance UID."""
    paths = write_ct_series(
        folder,
        2,
        rows=16,
        columns=16,
        patient_id=patient_id,
        patient_name="DOE^JANE",
        issuer=issuer,
        seed=seed,
    )
    for path in paths:
        ds = pydicom.dcmread(path)
        other = Dataset()
        other.PatientID = nhs
        other.IssuerOfPatientID = "NHS"
        other.TypeOfPatientID = "TEXT"
        ds.OtherPatientIDsSequence = [other]
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    storescu(server, *paths, aet=aet)
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


def worklist_row(page: Page, uid: str) -> Locator:
    return page.locator(f'#items tbody tr[data-study="{uid}"]')


def test_worklist_claim_report_beside_a_prior_from_another_trust_and_sign_final(
    module_netpacs: Netpacs, browser: Browser, tmp_path: Path
) -> None:
    netpacs = module_netpacs  # its own patient; the "Mine" view holds only its claim
    number = valid_nhs("401023213")
    # Royal Surrey scanned her in January; Eastbourne scans her now.
    prior = send(
        netpacs, tmp_path / "prior", aet="RSCH_CT1", patient_id="RA2777", issuer="RA2",
        nhs=number, seed=0,
    )  # fmt: skip
    current = send(
        netpacs, tmp_path / "current", aet="EDGH_CT1", patient_id="RXC2001", issuer="RXC",
        nhs=number, seed=100, BodyPartExamined="ABDOMEN",
    )  # fmt: skip

    # Eastbourne's own radiologist has the worklist open.
    other = signed_in_page(browser, netpacs, "rxc.radiologist")
    other.goto(f"{netpacs.base_url}/worklist")
    theirs = worklist_row(other, current)
    expect(theirs.locator(".claimed")).to_have_text("—")

    # Brighton's radiologist sees it on the regional worklist and claims it.
    page = signed_in_page(
        browser, netpacs, "ryr.radiologist", viewport={"width": 1400, "height": 900}
    )
    traffic = Traffic()
    traffic.attach(page)
    page.goto(f"{netpacs.base_url}/worklist")
    row = worklist_row(page, current)
    expect(row).to_contain_text("East Sussex Healthcare NHS Trust (RXC)")
    expect(row).to_contain_text("DOE, JANE")
    expect(row).to_contain_text("RXC2001")
    expect(row).to_contain_text("unreported")
    expect(page.locator('#counts tr[data-trust="RXC"]')).to_be_visible()
    row.get_by_role("button", name="Claim").click()
    expect(row.locator(".claimed")).to_contain_text("you since")
    expect(page.locator("#notice")).to_contain_text("You have claimed DOE, JANE")
    expect(row.get_by_role("button", name="Claim")).to_have_count(0)
    page.get_by_text("Mine", exact=True).click()
    expect(page).to_have_url(re.compile(r"/worklist\?view=mine&"))
    expect(page.locator("#items tbody tr")).to_have_count(1)
    expect(worklist_row(page, current)).to_be_visible()
    page.get_by_text("Everything I may report").click()
    expect(worklist_row(page, prior)).to_be_visible()

    # Eastbourne's page shows who has it without a reload (the claim is region-wide);
    # their claim is refused with why, and so is saving a report over it.
    expect(theirs.locator(".claimed")).to_contain_text("(RYR)", timeout=15_000)
    theirs.get_by_role("button", name="Claim").click()
    expect(other.get_by_role("alert")).to_contain_text("Could not claim DOE, JANE (CT ABDOMEN")
    expect(other.get_by_role("alert")).to_contain_text("claimed by")
    expect(other.get_by_role("alert")).to_contain_text("ryr.radiologist")
    theirs.get_by_role("link", name="Open").click()
    expect(other.locator("#claim-state")).to_contain_text("Claimed by Demo radiologist (RYR)")
    other.get_by_label("Report text").fill("FINDINGS:\nSeen first at Eastbourne.")
    other.get_by_label("Report text").blur()
    expect(other.get_by_role("alert")).to_contain_text("Not saved: claimed by")

    # The reporting page: the viewer opens the study; the Royal Surrey prior is listed.
    with page.expect_response(
        lambda r: "/dicomweb/" in r.url and current in r.url, timeout=60_000
    ) as viewer_asked:
        row.get_by_role("link", name="Open").click()
        expect(page).to_have_url(f"{netpacs.base_url}/report/{current}")
    assert viewer_asked.value.status == 200
    iframe = page.locator("iframe#viewer")
    assert current in (iframe.get_attribute("src") or "")
    priors = page.locator("#priors li[data-study]")
    expect(priors).to_have_count(1)
    expect(priors.first).to_have_attribute("data-study", prior)
    expect(priors.first).to_contain_text("Royal Surrey NHS Foundation Trust (RA2)")
    expect(priors.first).to_contain_text("01 Jan 2024")
    expect(page.locator("#claim-state")).to_contain_text("Claimed by you")
    priors.first.get_by_role("button", name="Compare").click()
    expect(iframe).to_have_attribute("src", re.compile(f"{re.escape(current)},{re.escape(prior)}"))
    expect(page.locator("#viewer-shows")).to_contain_text("beside the prior")

    # CT template, findings typed in; the draft saves itself and survives a reload.
    expect(page.get_by_label("Template")).to_have_value("CT")
    page.get_by_role("button", name="Insert template").click()
    text = page.get_by_label("Report text")
    expect(text).to_have_value(re.compile(r"^CLINICAL DETAILS:\n.*FINDINGS:\n.*CONCLUSION:", re.S))
    text.press("Control+End")
    text.press_sequentially(FINDINGS)
    expect(page.locator("#report-state")).to_contain_text(re.compile("unsaved changes", re.I))
    expect(page.locator("#report-state")).to_contain_text(re.compile(r"Draft .*saved \d\d:\d\d"))
    page.reload()
    expect(text).to_have_value(re.compile(re.escape(FINDINGS)))
    expect(page.locator("#report-state")).to_contain_text("Draft")
    expect(page.locator("#history li").first).to_contain_text(re.compile(r"draft · .*\(RYR\)"))

    # Sign final (after the confirmation): signed by and at, the text read-only.
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Sign final").click()
    expect(page.locator("#signed")).to_contain_text("Signed by")
    expect(page.locator("#signed")).to_contain_text("(RYR)")
    expect(page.locator("#signed")).to_contain_text(re.compile(r"at today \d\d:\d\d"))
    expect(text).not_to_be_editable()
    expect(text).to_have_value(re.compile(re.escape(FINDINGS)))
    expect(page.get_by_role("button", name="Sign final")).to_be_hidden()
    page.get_by_label("Addendum", exact=True).fill(
        "Comparison with the Royal Surrey CT: cyst unchanged."
    )
    page.get_by_role("button", name="Add addendum").click()
    expect(page.locator("#addenda li").first).to_contain_text("cyst unchanged")
    expect(page.locator("#addenda li").first).to_contain_text("(RYR)")
    page.get_by_text("Second opinion, discrepancy").click()
    page.get_by_label("Discrepancy").fill("Prior report missed the cyst.")
    page.get_by_role("button", name="Flag discrepancy").click()
    expect(page.locator("#flags")).to_contain_text("Discrepancy flagged by")
    expect(page.locator("#flags")).to_contain_text("Prior report missed the cyst.")
    with httpx.Client(base_url=netpacs.base_url, headers=netpacs.auth("ryr.radiologist")) as c:
        stored = c.get(f"/api/reports/{current}").json()
    assert stored["status"] == "final" and FINDINGS in stored["text"]
    assert stored["author"] == "ryr.radiologist"

    # The study list shows the report status.
    page.goto(f"{netpacs.base_url}/studies?name=DOE")
    expect(page.locator(f'tr[data-study="{current}"] .report-final')).to_have_text("final")
    expect(page.locator(f'tr[data-study="{prior}"] .report-unreported')).to_have_text("unreported")
    assert not traffic.external, traffic.report()


def test_turnaround_dashboard_counts_the_reported_study_and_draws_its_charts(
    netpacs: Netpacs, browser: Browser, tmp_path: Path
) -> None:
    """On an archive of its own: it counts every study of the region."""
    number = valid_nhs("450557710")
    done = send(
        netpacs, tmp_path / "a", aet="EDGH_CT1", patient_id="RXC3001", issuer="RXC",
        nhs=number, seed=3,
    )  # fmt: skip
    waiting = send(
        netpacs, tmp_path / "b", aet="RSUS_CT1", patient_id="K3002", issuer="RYR",
        nhs=valid_nhs("485777345"), seed=4, RequestedProcedurePriority="STAT",
    )  # fmt: skip
    with httpx.Client(base_url=netpacs.base_url, headers=netpacs.auth("ryr.radiologist")) as c:
        assert c.post(f"/api/worklist/{done}/claim").status_code == 200
        signed = c.put(f"/api/reports/{done}", json={"text": FINDINGS, "status": "final"})
        assert signed.status_code == 200, signed.text

    page = signed_in_page(browser, netpacs, "rxc.admin")
    page.goto(f"{netpacs.base_url}/turnaround?days=7")
    expect(page.get_by_label("7 days")).to_be_checked()
    rxc = page.locator('#turnaround tr[data-trust="RXC"][data-modality="CT"] td')
    expect(rxc.nth(2)).to_have_text("1")  # reported
    expect(rxc.nth(3)).not_to_have_text("—")  # a median
    expect(rxc.nth(5)).to_have_text("0")  # backlog
    ryr = page.locator('#turnaround tr[data-trust="RYR"][data-modality="CT"] td')
    expect(ryr.nth(2)).to_have_text("0")
    expect(ryr.nth(5)).to_have_text("1")
    expect(page.locator("#summary")).to_contain_text("1 reported, 1 waiting")
    backlog = page.locator("#backlog-chart svg")
    expect(backlog).to_have_attribute("aria-label", re.compile("RYR 1"))
    expect(backlog.locator("rect")).to_have_count(1)
    expect(page.locator("#backlog-chart .legend")).to_contain_text("Emergency")
    expect(page.locator("#tat-chart svg rect.median")).to_have_count(1)
    expect(page.locator("#tat-chart svg")).to_have_attribute("aria-label", re.compile("RXC CT"))
    page.get_by_text("90 days").click()
    expect(page).to_have_url(f"{netpacs.base_url}/turnaround?days=90")
    expect(page.locator("#summary")).to_contain_text("Last 90 days: 1 reported")

    # The administrator gives the waiting emergency to a radiologist from the worklist.
    page.get_by_role("link", name="Worklist").click()
    row = page.locator(f'#items tbody tr[data-study="{waiting}"]')
    expect(row).to_contain_text("Emergency")
    row.get_by_role("button", name="Reassign").click()
    page.get_by_label("To user name").fill("rtp.radiologist")
    page.get_by_role("button", name="Reassign", exact=True).last.click()
    expect(page.locator("#notice")).to_contain_text("now assigned to rtp.radiologist")
    expect(row.locator(".claimed")).to_contain_text("(RTP)")


def test_reporting_pages_are_for_reporters_and_linked_only_for_them(
    netpacs: Netpacs, browser: Browser
) -> None:
    """On an archive of its own: an empty worklist and dashboard."""
    clinician = signed_in_page(browser, netpacs, "rxc.clinician")
    for path in ("/worklist", "/turnaround", "/report/1.2.3"):
        response = clinician.goto(f"{netpacs.base_url}{path}")
        assert response is not None and response.status == 403, path
        expect(clinician.get_by_role("alert")).to_contain_text("radiologists and admins may")
    clinician.goto(f"{netpacs.base_url}/studies")
    expect(clinician.get_by_role("link", name="Worklist")).to_have_count(0)

    radiologist = signed_in_page(browser, netpacs, "rtp.radiologist")
    radiologist.goto(f"{netpacs.base_url}/studies")
    radiologist.get_by_role("link", name="Worklist").click()
    expect(radiologist).to_have_url(re.compile(r"/worklist\?view=all&status=open$"))
    expect(radiologist.locator("#items tbody")).to_contain_text("No studies in this view")
    radiologist.get_by_role("link", name="Turnaround").click()
    expect(radiologist.locator("#summary")).to_contain_text("0 reported, 0 waiting")
    response = radiologist.goto(f"{netpacs.base_url}/report/not-a-uid")
    assert response is not None and response.status == 400


def test_report_page_of_a_study_not_on_the_worklist_says_so_and_an_admin_can_queue_it(
    module_netpacs: Netpacs, browser: Browser, tmp_path: Path
) -> None:
    netpacs = module_netpacs
    # History brought in with `netpacs import` is not queued for reporting.
    paths = write_ct_series(
        tmp_path / "history", 2, rows=16, columns=16, patient_id="RXC4001", issuer="RXC", seed=7
    )
    imported = netpacs.cli("import", "--trust", "RXC", str(tmp_path / "history"))
    assert imported.returncode == 0, imported.stderr
    uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)

    def report_page(user: str) -> Page:
        page = signed_in_page(browser, netpacs, user)
        page.route(re.compile(r"/viewer"), lambda route: route.fulfill(body=""))  # not its point
        page.goto(f"{netpacs.base_url}/report/{uid}")
        return page

    # A radiologist is told why it cannot be reported here and who can change that;
    # no error, no template of another modality, no Sign final that must fail.
    page = report_page("rxc.radiologist")
    not_queued = page.locator("#not-queued")
    expect(not_queued).to_contain_text("not on your reporting worklist")
    expect(not_queued).to_contain_text("A PACS administrator can put it on the worklist")
    expect(page.get_by_role("alert")).to_have_count(0)
    expect(page.get_by_label("Template")).to_be_hidden()
    expect(page.get_by_label("Report text")).to_be_hidden()
    expect(page.get_by_role("button", name="Sign final")).to_be_hidden()
    expect(page.get_by_role("button", name="Put it on the worklist")).to_have_count(0)

    # An administrator puts it on the worklist from the page; it is then reportable.
    admin = report_page("rxc.admin")
    admin.get_by_role("button", name="Put it on the worklist").click()
    expect(admin.locator("#notice")).to_contain_text("on the worklist now")
    expect(admin.locator("#not-queued")).to_be_hidden()
    expect(admin.locator("#claim-state")).to_contain_text("Nobody has claimed this study")
    expect(admin.get_by_label("Template")).to_have_value("CT")
    expect(admin.locator("#priors")).to_contain_text("No priors at any trust")
    expect(admin.get_by_role("alert")).to_have_count(0)

    page.reload()
    expect(page.get_by_label("Template")).to_have_value("CT")
    expect(page.get_by_role("button", name="Sign final")).to_be_visible()
    expect(page.locator("#not-queued")).to_be_hidden()


def test_report_page_shows_the_orders_requesting_clinician_location_and_reason(
    module_netpacs: Netpacs, browser: Browser, tmp_path: Path
) -> None:
    netpacs = module_netpacs
    client = MllpClient(netpacs.mllp_port)
    try:
        placed = order("NW", "BRW0001", accession="BRW1", pid3="RXC4101^^^RXC^MR", placer="PL9")
        assert client.send(placed).code == "AA"
    finally:
        client.close()
    (entry,) = worklist(netpacs, tmp_path, "AccessionNumber=BRW1", "StudyInstanceUID")
    uid = str(entry.StudyInstanceUID)
    paths = write_ct_series(
        tmp_path / "ct", 1, rows=16, columns=16, patient_id="RXC4101", issuer="RXC",
        study_uid=uid, seed=11,
    )  # fmt: skip
    storescu(netpacs, *paths, aet="EDGH_CT1")

    page = signed_in_page(browser, netpacs, "rxc.radiologist")
    page.route(re.compile(r"/viewer"), lambda route: route.fulfill(body=""))
    page.goto(f"{netpacs.base_url}/report/{uid}")
    study = page.locator("#study")
    expect(study).to_contain_text("Requesting clinician")
    expect(study).to_contain_text("DR ANNA JONES")
    expect(study).to_contain_text("WARD7 12 B (ward)")
    expect(study).to_contain_text("Cough for six weeks, smoker")
    expect(study).to_contain_text("placer PL9")
    expect(page.get_by_role("alert")).to_have_count(0)
