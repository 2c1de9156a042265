"""The study list as a clinician pages through it: newest first, page after page, only
what their trust may see (the page is read newest first from the index, not sorted)."""

from __future__ import annotations

import html
import re
from pathlib import Path

import httpx
import pydicom
import pytest

from netpacs.synthetic import write_ct_series
from tests.conftest import Netpacs
from tests.http.conftest import storescu

# make_ct_series dates a study (seed % 366) days after 2024-01-01, at 8 + seed % 10 h.
SEEDS_NEWEST_FIRST = (200, 100, 50, 369, 3)  # 369 and 3: both 4 Jan 2024, 17:03 and 11:21
SENT_IN = (50, 3, 200, 369, 100)  # an order the dates do not follow


def _send(server: Netpacs, folder: Path, aet: str, *, issuer: str, seed: int) -> str:
    paths = write_ct_series(
        folder, 1, rows=16, columns=16, patient_id=f"{issuer}{seed:07d}", issuer=issuer, seed=seed
    )
    storescu(server, *paths, aet=aet)
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture(scope="module")
def sent(module_netpacs: Netpacs, tmp_path_factory: pytest.TempPathFactory) -> dict[int, str]:
    """Five East Sussex studies, and the newest of all at another trust (seed 300)."""
    folder = tmp_path_factory.mktemp("order")
    uids = {
        s: _send(module_netpacs, folder / str(s), "EDGH_CT1", issuer="RXC", seed=s) for s in SENT_IN
    }
    uids[300] = _send(module_netpacs, folder / "300", "RSUS_CT1", issuer="RYR", seed=300)
    return uids


def _rows(page: str) -> list[str]:
    return re.findall(r'<tr data-study="([^"]+)">', page)


def _older_link(page: str) -> str | None:
    link = re.search(r'<a href="(/studies\?[^"]*)">Older', page)
    return html.unescape(link.group(1)) if link else None


def test_a_clinician_pages_through_the_study_list_newest_first(
    module_netpacs: Netpacs, sent: dict[int, str]
) -> None:
    pages: list[list[str]] = []
    with httpx.Client(
        base_url=module_netpacs.base_url,
        headers=module_netpacs.auth("rxc.clinician"),
        timeout=30,
    ) as client:
        url: str | None = "/studies?limit=2"
        while url is not None and len(pages) < 5:
            resp = client.get(url)
            assert resp.status_code == 200, resp.text
            pages.append(_rows(resp.text))
            url = _older_link(resp.text)
    newest_first = [sent[s] for s in SEEDS_NEWEST_FIRST]
    # The first page is the two newest they may see (not the other trust's newer one);
    # "Older" goes on where the page ended, down to the last study, none twice.
    assert pages == [newest_first[:2], newest_first[2:4], newest_first[4:]]


def test_the_other_trusts_clinician_sees_only_their_study_first(
    module_netpacs: Netpacs, sent: dict[int, str]
) -> None:
    resp = httpx.get(
        f"{module_netpacs.base_url}/studies",
        params={"limit": 1},
        headers=module_netpacs.auth("ryr.clinician"),
        timeout=30,
    )
    assert resp.status_code == 200
    assert _rows(resp.text) == [sent[300]]
    assert _older_link(resp.text) is None
