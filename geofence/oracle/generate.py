#!/usr/bin/env python3
"""Generates geofence/tests/data/oracle.json from Uber's reference H3 library.

    pip install h3==4.5.0
    python3 geofence/oracle/generate.py

The fixtures hold:
- points: cell ids at every resolution 0..15 for points from the H3 test
  vectors (h3o's dataset/latLngToCell.txt, read from the cargo registry), the
  real GPS tracks, and central Helsinki;
- shapes: `polygon_to_cells` (centroid containment) for the shapes shipped in
  h3o's dataset/shapes and for corridor fences around real streets (built
  from the car track), each at a resolution chosen so the cover stays small.

The Rust tests (geofence/tests/oracle.rs) check that h3o gives the same cell
ids, and that the index's cover of each fence agrees with the reference:
every interior cell is in the reference cover, and every reference cell is
in the index's cover.
"""

import json
import math
import pathlib
import re

import h3

HERE = pathlib.Path(__file__).resolve().parent
DATA = HERE.parent / "tests" / "data"


def gpx_points(name):
    text = (DATA / name).read_text()
    return [(float(a), float(b)) for a, b in re.findall(r'<trkpt lat="([-0-9.]+)" lon="([-0-9.]+)"', text)]


def points():
    out = []
    # The H3 test vectors as h3o ships them (a cargo registry checkout).
    found = sorted(pathlib.Path.home().glob(".cargo/registry/src/*/h3o-*/dataset/latLngToCell.txt"))
    if not found:
        raise SystemExit("h3o's dataset/latLngToCell.txt not found: run `cargo fetch` first")
    vectors = found[-1].read_text().split("\n")
    for line in vectors[::350]:
        parts = line.split()
        if len(parts) == 3:
            out.append((float(parts[1]), float(parts[2])))
    out += gpx_points("around-visnjan-with-car.gpx")[::4]
    out += gpx_points("cerknicko-jezero.gpx")[::10]
    out += [(60.164 + i * 0.0015, 24.935 + i * 0.0018) for i in range(10)]
    out += [(89.9, 10.0), (-89.9, -170.0), (0.0, 0.0), (0.0, 179.99), (-33.8688, 151.2093)]
    return [
        {"lat": lat, "lng": lng, "cells": [h3.latlng_to_cell(lat, lng, r) for r in range(16)]}
        for lat, lng in out
    ]


def corridor(track, start, end, half_width_m):
    """A rotated rectangle around the street between two fixes of a real drive."""
    (lat0, lng0), (lat1, lng1) = track[start], track[end]
    k = math.cos(math.radians((lat0 + lat1) / 2))
    dy = (lat1 - lat0) * 111_195.0
    dx = (lng1 - lng0) * 111_195.0 * k
    n = math.hypot(dx, dy) or 1.0
    off_lat = (dx / n) * half_width_m / 111_195.0
    off_lng = (-dy / n) * half_width_m / (111_195.0 * k)
    ring = [
        (lat0 + off_lat, lng0 + off_lng),
        (lat1 + off_lat, lng1 + off_lng),
        (lat1 - off_lat, lng1 - off_lng),
        (lat0 - off_lat, lng0 - off_lng),
    ]
    ring.append(ring[0])
    return {"type": "Polygon", "coordinates": [[[lng, lat] for lat, lng in ring]]}


def shapes():
    out = []
    for path in sorted((DATA / "shapes").glob("*.geojson")):
        out.append((path.stem, json.loads(path.read_text())))
    track = gpx_points("around-visnjan-with-car.gpx")
    out.append(("street-visnjan-a", corridor(track, 0, 3, 15.0)))
    out.append(("street-visnjan-b", corridor(track, 40, 44, 20.0)))
    out.append(("street-visnjan-c", corridor(track, 80, 82, 12.0)))
    return out


def geometry(g):
    if g.get("type") == "Feature":
        return g["geometry"]
    if g.get("type") == "FeatureCollection":
        return g["features"][0]["geometry"]
    return g


def fill(geom, res):
    if geom.get("type") != "Polygon":
        return None
    rings = [[(lat, lng) for lng, lat, *_ in ring] for ring in geom["coordinates"]]
    try:
        return sorted(h3.polygon_to_cells(h3.LatLngPoly(rings[0], *rings[1:]), res))
    except Exception:  # noqa: BLE001 - a shape the reference refuses is recorded as such
        return None


def shape_fixtures():
    out = []
    for name, g in shapes():
        geom = geometry(g)
        chosen = None
        for res in range(5, 14):
            cells = fill(geom, res)
            if cells is None:
                break
            if len(cells) > 2500:
                break
            chosen = (res, cells)
        out.append(
            {
                "name": name,
                "geometry": geom,
                "res": chosen[0] if chosen else None,
                "cells": chosen[1] if chosen else None,
            }
        )
    return out


def main():
    fixtures = {"h3_version": h3.__version__, "points": points(), "shapes": shape_fixtures()}
    (DATA / "oracle.json").write_text(json.dumps(fixtures, indent=0, sort_keys=True) + "\n")
    print(f"wrote {len(fixtures['points'])} points and {len(fixtures['shapes'])} shapes")


if __name__ == "__main__":
    main()
