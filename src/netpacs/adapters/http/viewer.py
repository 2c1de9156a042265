"""The OHIF Viewer at ``/viewer`` and the study list pages (``/``, ``/studies``).

The viewer is the prebuilt OHIF dist/ that ``scripts/install-viewer.py`` prepared for
``/viewer/`` (``make setup`` installs it into ``Settings.effective_viewer_dir``). Real
files are served with their type and cache headers (a gzip twin when the browser
takes it); every other path under ``/viewer`` without a file extension is a client
route of the single-page app and gets ``index.html``, so that
``/viewer?StudyInstanceUIDs=<uid>`` opens a study. Without an installed viewer,
``/viewer`` answers 503 and says how to install it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
from email.utils import formatdate
from pathlib import Path, PurePosixPath
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from netpacs.adapters.http import edge_read
from netpacs.adapters.http.deps import HttpServices, services
from netpacs.adapters.http.pages import study_list
from netpacs.adapters.http.pages.render import render

router = APIRouter(include_in_schema=False)
Services = Annotated[HttpServices, Depends(services)]
router.include_router(study_list.router)

INDEX = "index.html"
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".jsonc": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".ico": "image/x-icon",
    ".xml": "application/xml",
    ".txt": "text/plain; charset=utf-8",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".onnx": "application/octet-stream",
}
# Webpack names its chunks and assets after a content hash: they never change.
_HASHED = re.compile(r"(^|\.)[0-9a-f]{16,}\.")
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"  # index.html and app-config.js: always the installed ones
_SHORT = "public, max-age=3600"


_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.S)


@functools.lru_cache(maxsize=4)
def _inline_hashes(index: Path, _mtime_ns: int, _size: int) -> tuple[str, ...]:
    """The CSP sources of the inline scripts of the installed index.html (OHIF sets its
    PUBLIC_URL in two): their SHA-256, so that no other inline script runs."""
    found = _INLINE_SCRIPT.findall(index.read_bytes())
    return tuple(f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in found)


def viewer_policy(root: Path) -> str:
    """The Content-Security-Policy of every viewer file (a worker script's own answer is
    its policy): OHIF's scripts from this origin and its two inline ones, its codecs'
    WebAssembly, blob: workers, the inline styles React and its CSS loader inject, and
    framing only by pages of this origin (the report page)."""
    index = root / INDEX
    try:
        stat = index.stat()
        inline = " ".join(_inline_hashes(index, stat.st_mtime_ns, stat.st_size))
    except OSError:
        inline = ""
    return (
        "default-src 'self'; "
        f"script-src 'self' {inline} 'wasm-unsafe-eval'; "
        "worker-src 'self' blob:; "
        "style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; "
        "font-src 'self' data:; "
        "connect-src 'self' data: blob:; "
        "media-src 'self' blob:; "
        "frame-ancestors 'self'; "
        "object-src 'none'; "
        "base-uri 'self'"
    )


def _viewer_dir(svc: HttpServices) -> Path:
    return svc.web.viewer_dir


def _installed(root: Path) -> bool:
    return (root / INDEX).is_file()


def _resolve(root: Path, path: str) -> Path | None:
    """The file ``path`` names inside ``root``; None when it is not one, or escapes it."""
    if "\\" in path or "\x00" in path:
        return None
    parts = PurePosixPath(path).parts
    # No parent directories, no dot files (the install stamp), no absolute paths.
    if any(part.startswith((".", "/")) for part in parts):
        return None
    candidate = root.joinpath(*parts)
    try:
        real = candidate.resolve(strict=True)
        if not real.is_relative_to(root.resolve(strict=True)):
            return None
    except (OSError, RuntimeError):
        return None
    return real if real.is_file() else None


def _cache_control(name: str) -> str:
    if name in (INDEX, "app-config.js"):
        return _REVALIDATE
    return _IMMUTABLE if _HASHED.search(name) else _SHORT


def _etag(stat: os.stat_result) -> str:
    base = f"{stat.st_mtime}-{stat.st_size}".encode()
    return '"' + hashlib.md5(base, usedforsecurity=False).hexdigest() + '"'


def _accepts_gzip(request: Request) -> bool:
    for item in request.headers.get("accept-encoding", "").split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() == "gzip" and params.replace(" ", "") != "q=0":
            return True
    return False


def _file(request: Request, root: Path, path: Path) -> Response:
    """One file of the viewer: type, cache headers, 304, the gzip twin when taken."""
    media_type = _MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
    headers = {
        "cache-control": _cache_control(path.name),
        "content-security-policy": viewer_policy(root),
        "x-frame-options": "SAMEORIGIN",
    }
    twin = path.with_name(path.name + ".gz")
    send = path
    if "range" not in request.headers and twin.is_file():
        headers["vary"] = "Accept-Encoding"
        if _accepts_gzip(request):
            send = twin
            headers["content-encoding"] = "gzip"
    stat = send.stat()
    etag = _etag(stat)
    if etag in request.headers.get("if-none-match", ""):
        headers["etag"] = etag
        return Response(status_code=304, headers=headers)
    headers["etag"] = etag
    headers["last-modified"] = formatdate(stat.st_mtime, usegmt=True)
    return FileResponse(send, media_type=media_type, headers=headers, stat_result=stat)


def _not_installed(request: Request, root: Path) -> HTMLResponse:
    return render(
        request, "viewer_missing.html", status=503, headers={"retry-after": "60"}, where=root
    )


def _index(request: Request, root: Path, svc: HttpServices) -> Response:
    if not _installed(root):
        return _not_installed(request, root)
    if svc.edge_read is not None:
        return _edge_index(root, svc)
    return _file(request, root, root / INDEX)


def _edge_index(root: Path, svc: HttpServices) -> Response:
    """At an edge node: index.html with the banner over the viewer while the core is
    away, and the script that keeps it up to date (edge_read.py)."""
    assert svc.edge_read is not None
    html = (root / INDEX).read_text(encoding="utf-8")
    down = svc.edge_read.link_down()
    banner = edge_read.banner_html(down.banner(svc.edge_read.zone)) if down else ""
    script = '<script src="/edge/banner.js" defer></script>'
    html = re.sub(r"<body([^>]*)>", lambda m: m.group(0) + banner + script, html, count=1)
    headers = {
        "cache-control": "no-store",
        "content-security-policy": viewer_policy(root),
        "x-frame-options": "SAMEORIGIN",
    }
    return HTMLResponse(html, headers=headers)


@router.get("/viewer")
def viewer(request: Request, svc: Services) -> Response:
    """The viewer; ``?StudyInstanceUIDs=<uid>[,<uid>...]`` opens those studies."""
    return _index(request, _viewer_dir(svc), svc)


@router.get("/viewer/{path:path}")
def viewer_file(path: str, request: Request, svc: Services) -> Response:
    """A file of the viewer, or ``index.html`` for the viewer's own (client) routes."""
    root = _viewer_dir(svc)
    if not _installed(root):
        return _not_installed(request, root)
    if path:
        found = _resolve(root, path)
        if found is not None:
            return _file(request, root, found)
        if "." in PurePosixPath(path).name:
            # A missing asset must not become index.html (a chunk would fail to parse).
            return Response(
                "not found",
                status_code=404,
                media_type="text/plain",
                headers={"cache-control": _SHORT},
            )
    return _index(request, root, svc)
