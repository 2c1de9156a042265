#!/usr/bin/env python3
"""Install the OHIF Viewer that netpacs serves at /viewer (run by `make setup`).

Fetches the pinned prebuilt viewer (npm package ``@ohif/app``) with ``npm pack``,
checks it against the pinned integrity hash, and installs a prepared copy of its
``dist/`` into ``<venv>/share/netpacs/viewer`` (the default ``viewer_dir``):

- built for the site root, it is moved under ``/viewer/`` (PUBLIC_URL, the webpack
  public path of every bundle and worker, ``url(/...)`` in the style sheets, the
  root-relative links of index.html, manifest.json and the service worker list);
- the two places that would fetch from the internet (a CDN script in the OIDC
  silent-refresh page, the itk-wasm contour-interpolation pipelines on jsDelivr)
  are pointed at the same origin, so the viewer never leaves the netpacs origin;
- ``app-config.js`` is replaced by ours: one DICOMweb data source, netpacs on the
  same origin, route ``/viewer?StudyInstanceUIDs=...``;
- text assets get a gzip twin (``.gz``) that netpacs serves when the browser
  accepts it.

Idempotent and quick: a stamp file records the version and this script's hash;
when it matches, nothing is done. The tarball is cached beside the install, so a
change to this script re-installs without the network. Only this script needs the
network (npm registry), and only once; the running product never fetches anything.

    .venv/bin/python scripts/install-viewer.py [--dest DIR] [--force]
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

PACKAGE = "@ohif/app"
VERSION = "3.13.2"
# `npm view @ohif/app@3.13.2 dist.integrity`
INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="  # noqa: E501
BASE = "/viewer/"
STAMP = ".netpacs-viewer"
GZIP_SUFFIXES = frozenset({".js", ".mjs", ".css", ".html", ".json", ".wasm", ".svg", ".map"})
GZIP_MIN_BYTES = 1024

APP_CONFIG = """\
/** OHIF Viewer configuration for netpacs, written by scripts/install-viewer.py. */
(function () {
  // netpacs DICOMweb on the same origin as the viewer (no other server, ever).
  var dicomweb = window.location.origin + '/dicomweb';
  window.config = {
    name: 'netpacs',
    // The viewer is served under /viewer/ (PUBLIC_URL); with the router at the root,
    // the viewer route is exactly /viewer?StudyInstanceUIDs=...
    routerBasename: '/',
    extensions: [],
    modes: [],
    // No onboarding tour over the first image a clinician opens.
    customizationService: [{ 'ohif.tours': { $set: [] } }],
    // netpacs has its own study list at /studies.
    showStudyList: false,
    investigationalUseDialog: { option: 'never' },
    maxNumberOfWebWorkers: 3,
    showWarningMessageForCrossOrigin: false,
    showCPUFallbackMessage: true,
    showLoadingIndicator: true,
    strictZSpacingForVolumeViewport: true,
    groupEnabledModesFirst: true,
    maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 25 },
    showErrorDetails: 'always',
    defaultDataSourceName: 'dicomweb',
    dataSources: [
      {
        namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
        sourceName: 'dicomweb',
        configuration: {
          friendlyName: 'netpacs',
          name: 'netpacs',
          qidoRoot: dicomweb,
          wadoRoot: dicomweb,
          wadoUriRoot: dicomweb,
          staticWado: false,
          qidoSupportsIncludeField: true,
          supportsFuzzyMatching: false,
          supportsWildcard: true,
          imageRendering: 'wadors',
          thumbnailRendering: 'thumbnail',
          thumbnailRequestStrategy: 'fetch',
          enableStudyLazyLoad: true,
          bulkDataURI: { enabled: true, relativeResolution: 'studies' },
          omitQuotationForMultipartRequest: true,
        },
      },
    ],
    httpErrorHandler: function (error) {
      console.warn('netpacs DICOMweb request failed', error && error.status);
    },
  };
})();
"""


def log(message: str) -> None:
    print(f"install-viewer: {message}", file=sys.stderr, flush=True)


# -- fetching --------------------------------------------------------------------------


def ensure_npm() -> str:
    """The npm executable; Debian's nodejs and npm are installed when it is missing."""
    npm = shutil.which("npm")
    if npm:
        return npm
    log("npm is missing: installing Debian's nodejs and npm")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", "nodejs", "npm"],
        check=True,
        env=env,
    )
    npm = shutil.which("npm")
    if not npm:
        raise SystemExit("install-viewer: npm is still missing after apt-get install npm")
    return npm


def integrity_of(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def fetch(cache: Path) -> Path:
    """The package tarball, from the cache or `npm pack`, checked against INTEGRITY."""
    tarball = cache / f"ohif-app-{VERSION}.tgz"
    if tarball.exists() and integrity_of(tarball) == INTEGRITY:
        return tarball
    cache.mkdir(parents=True, exist_ok=True)
    npm = ensure_npm()
    log(f"fetching {PACKAGE}@{VERSION} with npm pack (about 50 MB)")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        subprocess.run(
            [npm, "pack", f"{PACKAGE}@{VERSION}", "--silent", "--pack-destination", tmp],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        packed = Path(tmp) / tarball.name
        got = integrity_of(packed)
        if got != INTEGRITY:
            raise SystemExit(f"install-viewer: {PACKAGE}@{VERSION} integrity {got} != {INTEGRITY}")
        packed.replace(tarball)
    return tarball


def extract_dist(tarball: Path, into: Path) -> None:
    """``package/dist/`` of the tarball into ``into`` (nothing outside it is written)."""
    prefix = "package/dist/"
    with tarfile.open(tarball, "r:gz") as tar:
        members = []
        for member in tar.getmembers():
            if not member.name.startswith(prefix) or not (member.isfile() or member.isdir()):
                continue
            member.name = member.name[len(prefix) :]
            if member.name:
                members.append(member)
        tar.extractall(into, members=members, filter="data")


# -- preparing the copy for /viewer/ -----------------------------------------------------


def rewrite(path: Path, edit: Callable[[str], str]) -> bool:
    text = path.read_text(encoding="utf-8")
    new = edit(text)
    if new != text:
        path.write_text(new, encoding="utf-8")
        return True
    return False


def _index_html(text: str) -> str:
    text = text.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{BASE}"')
    return re.sub(r'\b(href|src|content)="/(?!/)', rf'\1="{BASE}', text)


def _bundle(text: str) -> str:
    text = text.replace('__webpack_require__.p = "/";', f'__webpack_require__.p = "{BASE}";')
    text = text.replace("'/dicom-microscopy-viewer/", f"'{BASE}dicom-microscopy-viewer/")
    # itk-wasm would load its contour-interpolation pipelines from jsDelivr: keep the
    # request on our origin (it is not shipped in dist/, so that one tool is offline).
    return re.sub(
        r"https://cdn\.jsdelivr\.net/npm/@itk-wasm/([a-z-]+)@\$\{[a-z_]+\}/dist/pipelines",
        rf"{BASE}itk-wasm/\1/pipelines",
        text,
    )


def _css(text: str) -> str:
    return re.sub(r"url\((['\"]?)/(?!/)", rf"url(\1{BASE}", text)


def _manifest(text: str) -> str:
    text = re.sub(r'("(?:src|start_url)"\s*:\s*")/(?!/)', rf"\1{BASE}", text)
    return text


def _service_worker(text: str) -> str:
    return text.replace('"url":"/', f'"url":"{BASE}')


def _silent_refresh(text: str) -> str:
    # An ES5 shim from cdnjs, for browsers no one uses any more.
    return re.sub(r'\s*<script src="https://[^"]+"></script>', "", text)


def prepare(dist: Path) -> None:
    """Adjust the extracted copy to run under /viewer/ on the netpacs origin."""
    if not rewrite(dist / "index.html", _index_html):
        raise SystemExit("install-viewer: index.html has no PUBLIC_URL to adjust")
    patched = [p.name for p in sorted(dist.rglob("*.js")) if rewrite(p, _bundle)]
    if not any(name.startswith("app.bundle.") for name in patched):
        raise SystemExit("install-viewer: the app bundle has no webpack public path to adjust")
    for css in dist.rglob("*.css"):
        rewrite(css, _css)
    rewrite(dist / "manifest.json", _manifest)
    rewrite(dist / "sw.js", _service_worker)
    rewrite(dist / "silent-refresh.html", _silent_refresh)
    (dist / "app-config.js").write_text(APP_CONFIG, encoding="utf-8")


def precompress(dist: Path) -> None:
    for path in dist.rglob("*"):
        if path.suffix in GZIP_SUFFIXES and path.is_file():
            data = path.read_bytes()
            if len(data) >= GZIP_MIN_BYTES:
                packed = gzip.compress(data, compresslevel=6, mtime=0)
                if len(packed) < len(data) * 0.9:
                    path.with_name(path.name + ".gz").write_bytes(packed)


# -- installing --------------------------------------------------------------------------


def stamp_text() -> str:
    script = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return f"{PACKAGE} {VERSION} {script}\n"


def install(dest: Path, *, force: bool) -> None:
    stamp = dest / STAMP
    if not force and stamp.exists() and stamp.read_text() == stamp_text():
        return
    share = dest.parent
    tarball = fetch(share / "cache")
    log(f"installing {PACKAGE}@{VERSION} into {dest}")
    share.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".viewer-", dir=share))
    try:
        extract_dist(tarball, staging)
        prepare(staging)
        precompress(staging)
        (staging / STAMP).write_text(stamp_text())
        staging.chmod(0o755)
        old = share / f".viewer-old-{os.getpid()}"
        if dest.exists():
            dest.rename(old)
        staging.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log("done")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dest",
        type=Path,
        default=Path(sys.prefix) / "share" / "netpacs" / "viewer",
        help="where to install the prepared dist/ (default: %(default)s)",
    )
    parser.add_argument("--force", action="store_true", help="reinstall even when up to date")
    args = parser.parse_args()
    install(args.dest.absolute(), force=args.force)


if __name__ == "__main__":
    main()
