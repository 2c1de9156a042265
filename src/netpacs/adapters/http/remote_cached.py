"""A DIMSE network's study opened in the viewer (issue 14): the WADO-RS and QIDO-RS
resources under ``/dicomweb/networks/<name>/studies/<uid>/...`` answered from the
federation cache (services.federation.cached_study), the study retrieved into it first
when it is not there (C-GET, or C-MOVE to our AE). The routes and the access decision
are adapters.http.remote's; this module turns a resource path into an answer.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from netpacs.adapters.http.deps import HttpServices, base_url
from netpacs.adapters.http.dicomweb import multipart
from netpacs.adapters.http.errors import HttpError
from netpacs.adapters.http.federation import NETWORKS_ROOT
from netpacs.domain.federation import PeerAnswerError
from netpacs.domain.networks import Network
from netpacs.domain.outcomes import Problem
from netpacs.services.federation import FederationRefused
from netpacs.services.federation.cached_study import CachedInstance, CachedStudy
from netpacs.services.frames import FRAME_MEDIA_TYPES, FrameError, parse_frame_list
from netpacs.services.render import RenderError

_JSON = "application/dicom+json"
_UID = r"[0-9.]{1,64}"
_PATH = re.compile(
    rf"(?:/series(?:/(?P<series>{_UID})(?P<instances>/instances(?:/(?P<sop>{_UID})"
    rf"(?:/frames/(?P<frames>[0-9,]{{1,200}})|/bulk/.*)?)?)?)?)?"
    r"(?P<what>/metadata|/rendered|/thumbnail)?/?"
)
_STATUS = {Problem.NOT_FOUND: 404, Problem.NOT_ACCEPTABLE: 406, Problem.MALFORMED: 400}


def _study(svc: HttpServices, network: Network, study_uid: str) -> CachedStudy:
    if svc.remote_cache is None:
        raise HttpError(404, f"studies of {network.name} cannot be opened here")
    try:
        return svc.remote_cache.study(network, study_uid)
    except FederationRefused as exc:
        raise HttpError(403, f"not opened: {exc}") from None
    except PeerAnswerError as exc:
        raise HttpError(502, f"{network.name}: {exc}") from None


def _json(body: object) -> Response:
    return Response(orjson.dumps(body), media_type=_JSON)


def study_search(request: Request, svc: HttpServices, network: Network, study_uid: str) -> Response:
    """``studies?StudyInstanceUID=<uid>``: the study's QIDO-RS match."""
    study = _study(svc, network, study_uid)
    url = f"{base_url(request)}{NETWORKS_ROOT}/{quote(network.name, safe='')}/studies/{study_uid}"
    return _json([study.study_match(url)])


def resource(
    request: Request, svc: HttpServices, network: Network, study_uid: str, tail: str
) -> Response:
    """``studies/<uid><tail>`` (PS3.18 10.4 and 10.6) from the cached study."""
    match = _PATH.fullmatch(tail)
    if match is None or "/bulk/" in tail:
        raise HttpError(404, f"{tail[:80]!r} is not offered for a study of {network.name}")
    study = _study(svc, network, study_uid)
    series, sop, what = match["series"], match["sop"], match["what"]
    chosen = study.select(series, sop)
    if not chosen:
        raise HttpError(404, f"study {study_uid} of {network.name} has no such series or instance")
    try:
        if match["frames"] is not None:
            return _frames(request, chosen[0], match["frames"])
        if what == "/metadata":
            return _json([i.header for i in chosen])
        if what in ("/rendered", "/thumbnail"):
            return Response(CachedStudy.rendered(chosen[0]), media_type="image/jpeg")
        if tail.rstrip("/") == "/series":
            return _json(study.series_matches())
        if match["instances"] is not None and sop is None:
            return _json(study.instance_matches(series))
    except (FrameError, RenderError) as exc:
        raise HttpError(_STATUS.get(exc.problem, 400), str(exc)) from None
    # The study, a series or an instance as Part 10 objects (PS3.18 10.4.1.1.1), streamed.
    return _objects([i.path for i in chosen])


def _objects(paths: list[Path]) -> Response:
    boundary = secrets.token_hex(16)

    def body() -> Iterator[bytes]:
        for path in paths:
            yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    media = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return StreamingResponse(body(), media_type=media)


def _frames(request: Request, inst: CachedInstance, frames: str) -> Response:
    numbers = parse_frame_list(frames)
    accept = (request.headers.get("accept") or "").lower()
    stored = "transfer-syntax=*" in accept or any(
        media in accept for media in set(FRAME_MEDIA_TYPES.values())
    )
    media, parts = CachedStudy.frames(inst, numbers, stored=stored)
    return multipart(parts, media)
