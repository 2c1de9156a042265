"""The study list page (/studies): columns, order, filters, paging, escaping, viewer links."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from playwright.sync_api import Browser, Dialog

from netpacs.adapters.http.pages.study_list import (
    FilterError,
    format_date,
    format_name,
    study_filter,
)
from netpacs.domain.nhs_number import format_for_people, is_valid
from netpacs.services.studies import nhs_number_of
from netpacs.synthetic import write_ct_series
from tests.browser.conftest import Traffic, signed_in_page
from tests.conftest import Netpacs
from tests.http.conftest import storescu

EVIL_NAME = "<script>alert(1)</script>^EVIL"
NHS_NUMBER = "9434765919"  # the NHS's own example number (valid check digit)


@dataclass(frozen=True)
class Studies:
    older: str  # 2024-01-01, East Sussex (EDGH_CT1), a name that is markup
    newer: str  # 2024-02-10, University Hospitals Sussex (RSUS_CT1), with an NHS number


def _send(server: Netpacs, folder: Path, aet: str, *, nhs: str | None = None, **kw: object) -> str:
    paths = write_ct_series(folder, 2, rows=32, columns=32, **kw)  # type: ignore[arg-type]
    if nhs:
        for path in paths:
            ds = pydicom.dcmread(path)
            other = pydicom.Dataset()
            other.PatientID = nhs
            other.IssuerOfPatientID = "NHS"
            other.TypeOfPatientID = "TEXT"
            ds.OtherPatientIDsSequence = [other]
            ds.save_as(path, enforce_file_format=True)
    storescu(server, *paths, aet=aet)
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture
def netpacs(module_netpacs: Netpacs) -> Netpacs:
    """One server for the module, holding the two studies of ``studies`` only."""
    return module_netpacs


@pytest.fixture(scope="module")
def studies(module_netpacs: Netpacs, tmp_path_factory: pytest.TempPathFactory) -> Studies:
    """Sent once: the tests only read them."""
    netpacs, tmp_path = module_netpacs, tmp_path_factory.mktemp("studies")
    older = _send(
        netpacs,
        tmp_path / "a",
        "EDGH_CT1",
        patient_id="RXC0000001",
        issuer="RXC",
        patient_name=EVIL_NAME,
        seed=0,
    )
    newer = _send(
        netpacs,
        tmp_path / "b",
        "RSUS_CT1",
        nhs=NHS_NUMBER,
        patient_id="RYR7654321",
        issuer="RYR",
        seed=40,
    )
    return Studies(older=older, newer=newer)


def rows(page: str) -> list[str]:
    return re.findall(r'<tr data-study="([^"]+)">', page)


def row_text(page: str, uid: str) -> str:
    m = re.search(rf'<tr data-study="{re.escape(uid)}">(.*?)</tr>', page, re.DOTALL)
    assert m, f"no row for {uid}"
    return html.unescape(re.sub(r"<[^>]+>", " ", m.group(1)))


def test_study_list_columns_order_and_escaping(netpacs: Netpacs, studies: Studies) -> None:
    with httpx.Client(base_url=netpacs.base_url, headers=netpacs.auth()) as client:
        home = client.get("/", follow_redirects=False)
        assert home.status_code in (302, 303, 307) and home.headers["location"] == "/studies"
        resp = client.get("/studies")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    page = resp.text
    assert rows(page) == [studies.newer, studies.older]  # newest first

    older = " ".join(row_text(page, studies.older).split())
    assert "<script>alert(1)</script>, EVIL" in older  # shown as text...
    assert "<script>" not in page  # ...never as markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "RXC0000001 (RXC)" in older
    assert "01 Jan 2024" in older
    assert "CT ABDOMEN PELVIS WITH CONTRAST" in older
    assert "East Sussex Healthcare NHS Trust (RXC)" in older
    assert "Eastbourne District General Hospital" in older
    assert f'href="/viewer?StudyInstanceUIDs={studies.older}"' in page

    newer = " ".join(row_text(page, studies.newer).split())
    assert "SYNTHETIC, CT PATIENT" in newer
    assert "RYR7654321 (RYR)" in newer
    assert "943 476 5919" in newer
    assert "10 Feb 2024" in newer
    assert "University Hospitals Sussex NHS Foundation Trust (RYR)" in newer
    assert "Royal Sussex County Hospital (Brighton)" in newer
    assert " CT " in f" {newer} "
    assert not re.search(r"(?:src|href)=\"(?:https?:)?//", page)  # nothing from elsewhere


def test_study_list_filters_and_pages(netpacs: Netpacs, studies: Studies) -> None:
    with httpx.Client(base_url=netpacs.base_url, headers=netpacs.auth()) as client:

        def listed(**params: str | int) -> list[str]:
            resp = client.get("/studies", params=params)
            assert resp.status_code == 200, resp.text
            return rows(resp.text)

        assert listed(name="synth") == [studies.newer]  # prefix, case-insensitive
        assert listed(name="<script>*") == [studies.older]
        assert listed(patient_id="RXC0000001") == [studies.older]
        assert listed(patient_id="RXC*") == [studies.older]
        assert listed(date_from="2024-02-01") == [studies.newer]
        assert listed(date_to="2024-01-31") == [studies.older]
        assert listed(date_from="2024-01-01", date_to="2024-01-01") == [studies.older]
        assert listed(modality="ct") == [studies.newer, studies.older]
        assert listed(modality="MR") == []

        first = client.get("/studies", params={"limit": 1})
        assert rows(first.text) == [studies.newer]
        older_link = re.search(r'<a href="(/studies\?[^"]*)">Older', first.text)
        assert older_link, first.text
        second = client.get(html.unescape(older_link.group(1)))
        assert rows(second.text) == [studies.older]
        assert "Older" not in second.text and "Newer" in second.text

        bad = client.get("/studies", params={"date_from": "31/01/2024"})
        assert bad.status_code == 400
        assert "is not a date" in bad.text
        assert client.get("/studies", params={"limit": 0}).status_code == 400


def test_study_list_link_opens_the_study_in_the_viewer(
    netpacs: Netpacs, studies: Studies, browser: Browser, viewer_installed: Path
) -> None:
    page = signed_in_page(browser, netpacs)
    traffic = Traffic()
    traffic.attach(page)
    dialogs: list[str] = []

    def dialog(d: Dialog) -> None:
        dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", dialog)

    page.goto(f"{netpacs.base_url}/")
    assert page.url == f"{netpacs.base_url}/studies"
    names = page.locator("tbody tr td:first-child a").all_inner_texts()
    assert names == ["SYNTHETIC, CT PATIENT", "<script>alert(1)</script>, EVIL"]
    assert page.locator("tbody script").count() == 0

    with page.expect_request(lambda r: studies.older in r.url and "/dicomweb/" in r.url):
        page.get_by_role("link", name="<script>alert(1)</script>, EVIL").click()
    assert page.url == f"{netpacs.base_url}/viewer?StudyInstanceUIDs={studies.older}"
    qido = page.evaluate("window.config.dataSources[0].configuration.qidoRoot")
    assert qido == f"{netpacs.base_url}/dicomweb"
    assert not dialogs, f"a script in the page ran: {dialogs}"
    assert not traffic.external, traffic.report()
    page.close()


def test_nhs_number_of_a_study_needs_the_nhs_issuer_and_a_valid_number() -> None:
    assert is_valid("9434765919")
    assert not is_valid("9434765918")  # wrong check digit
    assert not is_valid("943476591")
    assert format_for_people("9434765919") == "943 476 5919"
    by_issuer = {
        "00100020": {"vr": "LO", "Value": ["9434765919"]},
        "00100021": {"vr": "LO", "Value": ["NHS"]},
    }
    assert nhs_number_of(by_issuer) == "9434765919"
    local = {
        "00100020": {"vr": "LO", "Value": ["9434765919"]},
        "00100021": {"vr": "LO", "Value": ["RXC"]},  # an MRN that looks like one is not one
    }
    assert nhs_number_of(local) is None


def test_names_dates_and_filters_as_people_read_them() -> None:
    assert format_name("SMITH^JOHN^A^DR") == "SMITH, JOHN A DR"
    assert format_name("SMITH") == "SMITH"
    assert format_name("") == ""
    assert format_date("20240229") == "29 Feb 2024"
    assert format_date("2024") == "2024"
    f = study_filter(
        name="smi", patient_id=" RXC1 ", date_from="2024-01-01", date_to="", modality="ct"
    )
    assert (f.patient_name, f.patient_id, f.study_date, f.modality) == (
        "smi*",
        "RXC1",
        "20240101-",
        "CT",
    )
    with pytest.raises(FilterError):
        study_filter(
            name="", patient_id="", date_from="2024-02-01", date_to="2024-01-01", modality=""
        )
