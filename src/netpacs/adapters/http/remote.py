"""Another network's study opened through netpacs (issue 14): WADO-RS and the study's
QIDO-RS passed through, on demand, to the DICOMweb network that holds it.

``/dicomweb/networks/<name>/studies/<uid>/...`` (the RetrieveURL of a federated
search) is answered from network ``<name>``: the study, its series, metadata,
instances, frames, bulk data, rendered images and thumbnails, and
``/dicomweb/networks/<name>/studies?StudyInstanceUID=<uid>``; a DIMSE network's study
is answered from the federation cache instead (adapters.http.remote_cached). The answer
streams
through as it arrives, capped in size (NETPACS_FEDERATION_MAX_RETRIEVE_MB); metadata is
read whole (capped) so that the network's own URLs in it become ours. Nothing is
stored. Whether the user may open the study is the service's decision
(services.federation.remote).

The viewer asks for studies under ``/dicomweb/studies/<uid>``: :class:`OpenRemote`
sends a request for a remote study the user found lately to the network's path, so
OHIF opens it with its one data source.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from netpacs.adapters.http import remote_cached
from netpacs.adapters.http.access import requires
from netpacs.adapters.http.deps import HttpServices, base_url, check_url_uids, services
from netpacs.adapters.http.errors import HttpError
from netpacs.adapters.http.federation import NETWORKS_ROOT
from netpacs.adapters.transports.dicomweb_peer import DicomwebPeer
from netpacs.domain.federation import PeerAnswerError
from netpacs.domain.networks import Network, NhsNumberIn, Protocol
from netpacs.services.access import Capability
from netpacs.services.federation import FederationRefused, RemoteStudies

router = APIRouter(tags=["Federation"], dependencies=[requires(Capability.RETRIEVE)])

_UID = r"[0-9.]{1,64}"
# What may follow studies/<uid> (PS3.18 10.4 resources); anything else is refused.
_TAIL = re.compile(
    rf"(/series(/{_UID}(/instances(/{_UID}(/frames/[0-9,]{{1,200}}|/bulk/[0-9A-Za-z./]{{1,200}})?)?)?)?)?"
    r"(/metadata|/rendered|/thumbnail)?/?"
)
_MAX_METADATA = 64 << 20  # bytes of one metadata answer read to rewrite its URLs
_PASSED = ("content-type", "content-length", "content-location", "etag", "last-modified")


def _remote(svc: HttpServices) -> tuple[RemoteStudies, DicomwebPeer]:
    if svc.remote is None or svc.remote_wire is None:
        raise HttpError(404, "no other networks are configured")
    return svc.remote, svc.remote_wire


def _network(svc: HttpServices, name: str, study: str) -> Network:
    remote, _ = _remote(svc)
    if remote.openable(name) is None:
        raise HttpError(404, f"no network named {name[:64]!r} whose studies open here")
    try:
        found = remote.locate(study, network=name)
    except FederationRefused as exc:
        raise HttpError(403, f"not opened: {exc}") from None
    if found is None:
        raise HttpError(404, f"{name} does not answer for study {study}")
    return found


@router.get(f"{NETWORKS_ROOT}/{{name}}/studies", summary="A remote study's QIDO-RS answer")
def remote_search(request: Request, name: str) -> Response:
    uids = parse_qs(request.url.query).get("StudyInstanceUID", [])
    if len(uids) != 1 or "," in uids[0]:
        raise HttpError(400, "a search at another network names one StudyInstanceUID")
    check_url_uids(Study=uids[0])
    svc = services(request)
    network = _network(svc, name, uids[0])
    if network.protocol is Protocol.DIMSE:
        return remote_cached.study_search(request, svc, network, uids[0])
    extra = ""
    number = svc.remote.nhs_number(uids[0]) if svc.remote else None
    if network.nhs_number_in is NhsNumberIn.ISSUER_NHS and number:
        # Such a network (another netpacs) answers partners by NHS number only.
        extra = f"PatientID={number}&IssuerOfPatientID=NHS"
    return _pass(request, svc, network, "studies", metadata=True, extra=extra)


@router.get(f"{NETWORKS_ROOT}/{{name}}/studies/{{study}}{{tail:path}}", summary="Remote WADO-RS")
def remote_retrieve(request: Request, name: str, study: str, tail: str = "") -> Response:
    check_url_uids(Study=study)
    if not _TAIL.fullmatch(tail) or ".." in tail:
        raise HttpError(400, f"{tail[:80]!r} is not a WADO-RS resource of a study")
    svc = services(request)
    network = _network(svc, name, study)
    if network.protocol is Protocol.DIMSE:
        return remote_cached.resource(request, svc, network, study, tail)
    json_answer = tail.endswith(("/metadata", "/series")) or tail.endswith("/instances")
    if "/instances/" in tail and tail.endswith("/thumbnail"):
        # An instance's thumbnail is a small rendered image (PS3.18 10.4.1.1.3): asked
        # as such, since archives without the thumbnail resource (Orthanc) render.
        tail = tail.removesuffix("/thumbnail") + "/rendered"
    return _pass(request, svc, network, f"studies/{study}{tail}", metadata=json_answer)


def _pass(
    request: Request,
    svc: HttpServices,
    network: Network,
    path: str,
    *,
    metadata: bool,
    extra: str = "",
) -> Response:
    _, wire = _remote(svc)
    # Commas as themselves: some archives (Orthanc) do not decode %2C in viewport=w,h.
    query = re.sub("%2[Cc]", ",", request.url.query)
    query = f"{query}&{extra}" if query and extra else query or extra
    stack = contextlib.ExitStack()
    try:
        status, kind, chunks = stack.enter_context(
            wire.stream(network, path, accept=request.headers.get("accept"), params=query)
        )
        if status >= 500 or status in (401, 403, 407):
            raise HttpError(502, f"{network.name} answered HTTP {status}")
        if metadata and status == 200:
            body = _read(chunks, network)
            ours = f"{base_url(request)}{NETWORKS_ROOT}/{quote(network.name, safe='')}"
            body = body.replace(network.dicomweb.url.encode(), ours.encode())  # type: ignore[union-attr]
            stack.close()
            return Response(body, status_code=status, media_type=kind)
    except PeerAnswerError as exc:
        stack.close()
        raise HttpError(502, f"{network.name}: {exc}") from None
    except BaseException:
        stack.close()
        raise

    def body_then_close() -> Iterator[bytes]:
        with stack:
            yield from chunks

    return StreamingResponse(body_then_close(), status_code=status, media_type=kind)


def _read(chunks: Iterator[bytes], network: Network) -> bytes:
    body = bytearray()
    for chunk in chunks:
        body += chunk
        if len(body) > _MAX_METADATA:
            raise PeerAnswerError(f"metadata larger than {_MAX_METADATA >> 20} MiB")
    return bytes(body)


class OpenRemote:
    """ASGI middleware (inside the gate, which identifies the user): a viewer request
    under ``/dicomweb/studies/<uid>`` (or ``/dicomweb/studies?StudyInstanceUID=<uid>``)
    for a remote study goes to the network's path (services.federation.remote
    ``route``: a study the user found lately, else one we do not hold that a network
    holds and the user may open)."""

    _STUDY = re.compile(rf"/dicomweb/studies/({_UID})(/.*)?")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            path = scope["path"]
            uid = ""
            match = self._STUDY.fullmatch(path)
            if match:
                uid = match.group(1)
            elif path.rstrip("/") == "/dicomweb/studies":
                query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
                uids = query.get("StudyInstanceUID", [])
                uid = uids[0] if len(uids) == 1 and "," not in uids[0] else ""
            svc: HttpServices | None = scope.get("state", {}).get("services")
            remote = svc.remote if uid and svc else None
            name = None
            if remote is not None:
                name = remote.known(uid) or await run_in_threadpool(remote.route, uid)
            if name is not None:
                rest = path[len("/dicomweb/") :]
                scope = dict(scope)
                scope["path"] = f"{NETWORKS_ROOT}/{name}/{rest}"
                scope["raw_path"] = scope["path"].encode()
        await self.app(scope, receive, send)
