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
- the first image comes sooner (issue 16): the modes netpacs never opens are taken
  out of the build's plugin list, and index.html loads the chunks the viewer route
  always needs with ``<script defer>`` tags (they register without running), so they
  arrive and compile in parallel with the app bundle instead of in three waves after
  it (see ``preload_startup``);
- text assets get a gzip twin (``.gz``) that netpacs serves when the browser
  accepts it.

``--stock`` installs the same package prepared only as far as it needs to run here
(moved under /viewer/, kept on this origin, OHIF's own app-config.js with netpacs's
DICOMweb as its data source): ``bench/viewer_bench.py`` compares the two.

Idempotent and quick: a stamp file records the version and this script's hash;
when it matches, nothing is done. The tarball is cached beside the install, so a
change to this script re-installs without the network. Only this script needs the
network (npm registry), and only once; the running product never fetches anything.

    .venv/bin/python scripts/install-viewer.py [--dest DIR] [--cache DIR] [--force] [--stock]
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
import textwrap
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

# netpacs DICOMweb on the same origin as the viewer (no other server, ever): the one data
# source of both our configuration and the stock one the bench compares it with.
DATA_SOURCE = """\
{
  namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
  sourceName: 'dicomweb',
  configuration: {
    friendlyName: 'netpacs',
    name: 'netpacs',
    qidoRoot: window.location.origin + '/dicomweb',
    wadoRoot: window.location.origin + '/dicomweb',
    wadoUriRoot: window.location.origin + '/dicomweb',
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
}
"""

APP_CONFIG = """\
/** OHIF Viewer configuration for netpacs, written by scripts/install-viewer.py. */
(function () {
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
    dataSources: [DATA_SOURCE],
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


# -- a faster first image --------------------------------------------------------------
#
# OHIF starts in waves: the 17 MB app bundle runs, then asks (one dynamic import after
# another) for its default extensions, for every mode it was built with, and on the
# viewer route for that mode's extensions and the chunks they import in turn; only then
# does it send its first DICOMweb request. Each wave costs a round of requests, script
# compilation on the main thread and a turn of the event loop.

# Modes (and their extension) built into @ohif/app that netpacs never opens: research
# and demonstration tools reachable only by typing their route (netpacs links to
# /viewer?StudyInstanceUIDs=..., the longitudinal mode, and shows no mode list). Their
# code still loads at every start; taking them out of the build's plugin list spares it.
UNUSED_MODULES = (
    "@ohif/mode-tmtv",
    "@ohif/mode-preclinical-4d",
    "@ohif/mode-ultrasound-pleura-bline",
    "@ohif/extension-ultrasound-pleura-bline",
)
# The extensions the viewer route (the longitudinal mode) loads when it is entered
# (its ``extensionDependencies`` and those of the basic mode it extends).
VIEWER_ROUTE_EXTENSIONS = (
    "@ohif/extension-measurement-tracking",
    "@ohif/extension-cornerstone-dicom-sr",
    "@ohif/extension-cornerstone-dicom-seg",
    "@ohif/extension-cornerstone-dicom-pmap",
    "@ohif/extension-cornerstone-dicom-rt",
    "@ohif/extension-dicom-pdf",
    "@ohif/extension-dicom-video",
)
# Chunks that those extensions import in turn before the first image (seen in the
# resource timing of a load, `bench/viewer_bench.py --timeline`; ids of this pinned
# build: the cornerstone viewport, and each extension's panels and tools).
NESTED_CHUNKS = (2623, 9068, 5448, 899, 7463, 5910, 1206)

_PLUGIN_PUSH = re.compile(r'^pluginImports_(?:extensions|modes)\.push\("([^"]+)"\);\n', re.M)
_LOAD_MODULE = re.compile(r'  if \(module === "([^"]+)"\) \{\n(.*?)\n    return imported', re.S)
_CHUNK_ID = re.compile(r"__webpack_require__\.e\((?:/\* import\(\) \*/ )?(\d+)\)")
_CHUNK_FILES = re.compile(
    r"__webpack_require__\.u = \(chunkId\) => \{.*?\+ \{([^}]*)\}\[chunkId\]", re.S
)


def trim_plugins(bundle: str) -> tuple[str, list[str]]:
    """The app bundle without the unused modes and extensions, and the modules it
    still loads at start."""
    pushed = _PLUGIN_PUSH.findall(bundle)
    missing = [m for m in UNUSED_MODULES if m not in pushed]
    if missing or not pushed:
        raise SystemExit(f"install-viewer: the bundle's plugin list lacks {missing}")
    trimmed = _PLUGIN_PUSH.sub(lambda m: "" if m.group(1) in UNUSED_MODULES else m.group(0), bundle)
    return trimmed, [m for m in pushed if m not in UNUSED_MODULES]


def startup_chunks(bundle: str, modules: list[str]) -> list[int]:
    """The chunk ids the viewer route loads before its first image, in load order."""
    loaders = dict(_LOAD_MODULE.findall(bundle))
    ids: list[int] = []
    for module in [*modules, *VIEWER_ROUTE_EXTENSIONS]:
        if module not in loaders:
            raise SystemExit(f"install-viewer: the bundle has no loader for {module}")
        ids += [int(i) for i in _CHUNK_ID.findall(loaders[module])]
    ids += NESTED_CHUNKS
    return list(dict.fromkeys(ids))


def preload_startup(dist: Path) -> None:
    """Trim the plugin list, and let index.html load the start-up chunks itself.

    Each chunk is a plain script that registers its modules in the webpack runtime's
    chunk list (``rspackChunk``) without running them, so ``<script defer>`` tags
    before the app bundle fetch and compile all of them in parallel, off the main
    thread, while the app bundle downloads; OHIF's dynamic imports then find them
    installed and the waves cost no request. Their style sheets are linked likewise
    (the runtime finds a chunk's ``<link rel="stylesheet">`` and does not add another).
    """
    (bundle_path,) = dist.glob("app.bundle.*.js")
    bundle, modules = trim_plugins(bundle_path.read_text(encoding="utf-8"))
    bundle_path.write_text(bundle, encoding="utf-8")
    found = _CHUNK_FILES.search(bundle)
    if not found:
        raise SystemExit("install-viewer: the bundle has no chunk file map")
    hashes = dict(re.findall(r"(\d+): \"([0-9a-f]+)\"", found.group(1)))
    scripts, sheets = [], []
    for chunk in startup_chunks(bundle, modules):
        js = f"{chunk}.bundle.{hashes[str(chunk)]}.js" if str(chunk) in hashes else None
        css = f"{chunk}.css"
        if js and (dist / js).is_file():
            scripts.append(f'<script defer src="{BASE}{js}"></script>')
        if (dist / css).is_file():
            sheets.append(f'<link href="{BASE}{css}" rel="stylesheet">')
        if not (js or (dist / css).is_file()):
            raise SystemExit(f"install-viewer: chunk {chunk} has no file")

    def edit(text: str) -> str:
        app = re.search(r'<script defer src="[^"]*app\.bundle\.[0-9a-f]+\.js"></script>', text)
        css = re.search(r'<link href="[^"]*app\.bundle\.css" rel="stylesheet">', text)
        if not app or not css or app.start() > css.start():
            raise SystemExit("install-viewer: index.html has no app bundle to load chunks before")
        return (
            text[: app.start()]
            + "".join(scripts)
            + text[app.start() : css.end()]
            + "".join(sheets)
            + text[css.end() :]
        )

    rewrite(dist / "index.html", edit)


def relocate(dist: Path) -> None:
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


def app_config() -> str:
    source = textwrap.indent(DATA_SOURCE.strip(), "      ").lstrip()
    return APP_CONFIG.replace("DATA_SOURCE", source)


def prepare(dist: Path) -> None:
    """Our viewer: relocated, our configuration, and a faster start (see above)."""
    relocate(dist)
    (dist / "app-config.js").write_text(app_config(), encoding="utf-8")
    preload_startup(dist)


def _stock_config(text: str) -> str:
    """The package's own app-config.js with only what it needs to run here: the router
    at the root (the viewer route is /viewer under PUBLIC_URL) and netpacs's DICOMweb
    instead of the public demo server."""
    source = textwrap.indent(DATA_SOURCE.strip(), "    ").lstrip()
    new = text.replace("routerBasename: null,", "routerBasename: '/',", 1)
    new = new.replace("defaultDataSourceName: 'ohif',", "defaultDataSourceName: 'dicomweb',", 1)
    new, n = re.subn(
        r"\n  dataSources: \[\n.*?\n  \],\n",
        lambda _: f"\n  dataSources: [\n    {source},\n  ],\n",
        new,
        count=1,
        flags=re.S,
    )
    if n != 1 or "'/dicomweb'" not in new or "routerBasename: '/'" not in new:
        raise SystemExit("install-viewer: the stock app-config.js is not as expected")
    return new


def prepare_stock(dist: Path) -> None:
    """The stock viewer for comparison: relocated and pointed at netpacs, nothing else
    (no precompressed twins, no start-up changes, OHIF's other settings as shipped)."""
    relocate(dist)
    rewrite(dist / "app-config.js", _stock_config)


def precompress(dist: Path) -> None:
    for path in dist.rglob("*"):
        if path.suffix in GZIP_SUFFIXES and path.is_file():
            data = path.read_bytes()
            if len(data) >= GZIP_MIN_BYTES:
                packed = gzip.compress(data, compresslevel=6, mtime=0)
                if len(packed) < len(data) * 0.9:
                    path.with_name(path.name + ".gz").write_bytes(packed)


# -- installing --------------------------------------------------------------------------


def stamp_text(*, stock: bool = False) -> str:
    script = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return f"{PACKAGE} {VERSION} {script}{' stock' if stock else ''}\n"


def install(dest: Path, cache: Path, *, force: bool, stock: bool = False) -> None:
    stamp = dest / STAMP
    if not force and stamp.exists() and stamp.read_text() == stamp_text(stock=stock):
        return
    share = dest.parent
    tarball = fetch(cache)
    log(f"installing {PACKAGE}@{VERSION}{' (stock)' if stock else ''} into {dest}")
    share.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".viewer-", dir=share))
    try:
        extract_dist(tarball, staging)
        if stock:
            prepare_stock(staging)
        else:
            prepare(staging)
            precompress(staging)
        (staging / STAMP).write_text(stamp_text(stock=stock))
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
    parser.add_argument(
        "--cache",
        type=Path,
        help="where the package tarball is kept (default: DEST's parent/cache)",
    )
    parser.add_argument("--force", action="store_true", help="reinstall even when up to date")
    parser.add_argument(
        "--stock",
        action="store_true",
        help="the stock viewer, for comparison (bench/viewer_bench.py): only moved under "
        "/viewer/, kept on this origin and pointed at netpacs's DICOMweb",
    )
    args = parser.parse_args()
    dest = args.dest.absolute()
    cache = (args.cache or dest.parent / "cache").absolute()
    install(dest, cache, force=args.force, stock=args.stock)


if __name__ == "__main__":
    main()
