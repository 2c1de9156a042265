"""Reading the region file: the composition root's part of :mod:`netpacs.domain.region`."""

from __future__ import annotations

from pathlib import Path

from netpacs.domain.region import Region, RegionError
from netpacs.domain.region_file import parse_region_toml


def load_region(path: Path) -> Region:
    """The region of the TOML file at ``path``; :class:`RegionError` saying what is wrong
    (the file cannot be read, is not TOML, or an entry is wrong, and where)."""
    try:
        region = parse_region_toml(path.read_text(encoding="utf-8"), path.parent)
    except (OSError, UnicodeDecodeError) as exc:
        raise RegionError(f"cannot read region file {path}: {exc}") from None
    except RegionError as exc:
        raise RegionError(f"region file {path}: {exc}") from None
    for i, trust in enumerate(region.trusts):
        ca_file = trust.results_endpoint.ca_file if trust.results_endpoint else None
        if ca_file is not None and not ca_file.is_file():
            raise RegionError(
                f"region file {path}: trusts[{i}].results_mllp: 'ca_file' {str(ca_file)!r} "
                "is not a file"
            )
    return region
