"""Another network's DICOMweb archive as the federation gateway reaches it (issue 14).

:class:`DicomwebPeer` asks a network's QIDO-RS for a patient's studies by NHS number
(PS3.18 10.6): ``studies?PatientID=<nhs>``, the same with ``IssuerOfPatientID=NHS``
(another netpacs answers partners only so), or the Other Patient IDs Sequence with
issuer NHS. Everything the peer sends is bounded: the body is read as it arrives and
given up past ``max_bytes``, at most ``max_studies`` matches are asked for and kept,
and each item is checked (domain.federation). Any failure is one
:class:`~netpacs.domain.federation.PeerAnswerError` saying why, never another exception.

:meth:`DicomwebPeer.stream` passes one WADO-RS request through to the network (the
viewer opening a remote study), streaming its answer with a size cap; nothing is stored.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import orjson

from netpacs.domain.dicom.header import JsonDataset
from netpacs.domain.federation import PeerAnswerError
from netpacs.domain.networks import Auth, DicomwebAccess, Network, NhsNumberIn

_CHUNK = 64 * 1024
# Bodies as they are: a compressed body could inflate past every cap (we read raw bytes).
_IDENTITY = {"Accept-Encoding": "identity"}
_INCLUDE = "00081030,00080061,00201206,00201208,00100021"  # description, modalities, counts


def _verify(access: DicomwebAccess) -> ssl.SSLContext | bool:
    if access.ca_file is None and access.auth is not Auth.MUTUAL_TLS:
        return True
    context = ssl.create_default_context(cafile=str(access.ca_file) if access.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if access.auth is Auth.MUTUAL_TLS and access.cert_file is not None:
        context.load_cert_chain(
            str(access.cert_file), str(access.key_file) if access.key_file else None
        )
    return context


def _why(exc: Exception) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    if isinstance(exc, httpx.ConnectError):
        return "cannot connect"
    return f"{type(exc).__name__}: {str(exc)[:120]}"


@dataclass
class _Token:
    value: str
    expires: float


class DicomwebPeer:
    """The DICOMweb networks, as we ask them (thread-safe; one per process)."""

    def __init__(self, *, max_bytes: int, max_studies: int, max_retrieve_bytes: int) -> None:
        self.max_bytes = max_bytes  # of a QIDO-RS answer
        self.max_studies = max_studies
        self.max_retrieve_bytes = max_retrieve_bytes  # of one passed-through answer
        self._clients: dict[str, httpx.Client] = {}
        self._tokens: dict[str, _Token] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    def _client(self, network: Network) -> httpx.Client:
        assert network.dicomweb is not None
        with self._lock:
            client = self._clients.get(network.name)
            if client is None:
                client = httpx.Client(
                    verify=_verify(network.dicomweb),
                    timeout=network.timeout_seconds,
                    follow_redirects=False,
                    limits=httpx.Limits(max_connections=16, max_keepalive_connections=4),
                )
                self._clients[network.name] = client
            return client

    def _headers(self, network: Network, timeout: float) -> dict[str, str]:
        access = network.dicomweb
        assert access is not None
        if access.auth is not Auth.CLIENT_CREDENTIALS:
            return dict(_IDENTITY)
        with self._lock:
            token = self._tokens.get(network.name)
        if token is None or time.monotonic() > token.expires - 60:
            token = self._sign_in(network, timeout)
            with self._lock:
                self._tokens[network.name] = token
        return {**_IDENTITY, "Authorization": f"Bearer {token.value}"}

    def _sign_in(self, network: Network, timeout: float) -> _Token:
        access = network.dicomweb
        assert access is not None and access.token_url and access.secret_file
        try:
            secret = access.secret_file.read_text().strip()
            response = self._client(network).post(
                access.token_url,
                data={
                    "grant_type": "client_credentials",
                    "client_id": access.client_id or "",
                    "client_secret": secret,
                },
                timeout=timeout,
            )
            body = orjson.loads(response.content[:65536]) if response.status_code == 200 else {}
            value = body.get("access_token") if isinstance(body, dict) else None
        except (OSError, httpx.HTTPError, orjson.JSONDecodeError) as exc:
            raise PeerAnswerError(f"sign-in failed: {_why(exc)}") from None
        if not isinstance(value, str) or not value:
            raise PeerAnswerError(f"sign-in refused (HTTP {response.status_code})")
        expires = body.get("expires_in", 300)
        seconds = float(expires) if isinstance(expires, int | float) else 300.0
        return _Token(value, time.monotonic() + seconds)

    # -- QIDO-RS ---------------------------------------------------------------------------
    def find_studies(self, network: Network, nhs_number: str) -> list[JsonDataset]:
        """The raw study items the network answers for ``nhs_number`` (each still to be
        checked); :class:`PeerAnswerError` for anything else than a bounded JSON array."""
        if network.nhs_number_in is NhsNumberIn.PATIENT_ID:
            params = {"PatientID": nhs_number}
        elif network.nhs_number_in is NhsNumberIn.ISSUER_NHS:
            params = {
                "PatientID": nhs_number,
                "IssuerOfPatientID": "NHS",
                "includefield": "OtherPatientIDsSequence",
            }
        else:
            params = {
                "OtherPatientIDsSequence.PatientID": nhs_number,
                "OtherPatientIDsSequence.IssuerOfPatientID": "NHS",
            }
        return self._qido(network, params | {"limit": str(self.max_studies + 1)})

    def find_study(self, network: Network, study_instance_uid: str) -> list[JsonDataset]:
        """The network's answer for one study (with its patient's identifiers)."""
        params = {"StudyInstanceUID": study_instance_uid, "limit": "2"}
        if network.nhs_number_in.answered_in_other_ids:
            params["includefield"] = "OtherPatientIDsSequence"
        return self._qido(network, params)

    def _qido(self, network: Network, params: dict[str, str]) -> list[JsonDataset]:
        access = network.dicomweb
        assert access is not None
        params = {**params, "includefield": f"{_INCLUDE},{params.get('includefield', '')}"}
        params["includefield"] = params["includefield"].rstrip(",")
        timeout = network.timeout_seconds
        deadline = time.monotonic() + timeout
        try:
            headers = {"Accept": "application/dicom+json", **self._headers(network, timeout)}
            with self._client(network).stream(
                "GET", f"{access.url}/studies", params=params, headers=headers, timeout=timeout
            ) as response:
                if response.status_code == 204:
                    return []
                if response.status_code != 200:
                    raise PeerAnswerError(f"answered HTTP {response.status_code}")
                body = self._read(response, deadline)
        except httpx.TimeoutException:
            raise PeerAnswerError(f"no answer within {timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise PeerAnswerError(_why(exc)) from None
        if not body.strip():
            return []
        try:
            items = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise PeerAnswerError("answered something that is not JSON") from None
        if not isinstance(items, list):
            raise PeerAnswerError("answered JSON that is not a list of studies")
        return items

    def _read(self, response: httpx.Response, deadline: float) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise PeerAnswerError(f"answer too large ({int(declared):,} bytes)")
        if response.headers.get("content-encoding", "identity") not in ("identity", ""):
            raise PeerAnswerError("answered with a content encoding we did not ask for")
        body = bytearray()
        for chunk in response.iter_raw(_CHUNK):
            body += chunk
            if len(body) > self.max_bytes:
                raise PeerAnswerError(f"answer larger than {self.max_bytes:,} bytes: given up")
            if time.monotonic() > deadline:
                raise PeerAnswerError("no complete answer in time")
        return bytes(body)

    # -- WADO-RS pass-through ----------------------------------------------------------------
    @contextlib.contextmanager
    def stream(
        self, network: Network, path: str, *, accept: str | None, params: str
    ) -> Iterator[tuple[int, str, Iterator[bytes]]]:
        """GET ``<network url>/<path>``: (status, content type, the body in chunks, at
        most ``max_retrieve_bytes``; more ends the stream with :class:`PeerAnswerError`)."""
        access = network.dicomweb
        assert access is not None
        timeout = network.timeout_seconds
        try:
            headers = self._headers(network, timeout)
            if accept:
                headers["Accept"] = accept
            url = f"{access.url}/{path}" + (f"?{params}" if params else "")
            with self._client(network).stream(
                "GET",
                url,
                headers=headers,
                # The first byte within the network's timeout; a large body may take longer.
                timeout=httpx.Timeout(timeout * 5, connect=timeout),
            ) as response:
                kind = response.headers.get("content-type", "application/octet-stream")
                yield response.status_code, kind, self._chunks(response)
        except httpx.HTTPError as exc:
            raise PeerAnswerError(_why(exc)) from None

    def _chunks(self, response: httpx.Response) -> Iterator[bytes]:
        sent = 0
        try:
            for chunk in response.iter_raw(_CHUNK):
                sent += len(chunk)
                if sent > self.max_retrieve_bytes:
                    raise PeerAnswerError("answer larger than the pass-through cap")
                yield chunk
        except httpx.HTTPError as exc:
            raise PeerAnswerError(_why(exc)) from None
