"""The on-disk result of a slide run: one SQLite file of nuclei, queryable by region, written tile by tile.

Tables: ``meta`` (key/value JSON: the slide, the plan's signature, the network), ``types`` (code, name), ``tiles``
(one row per finished tile: its core, nuclei count, seconds) and ``nuclei`` (centroid and area in level-0 pixels
and um^2, type code, outline as float32 level-0 ``x, y`` pairs) with an R*Tree index on the outlines' boxes
(``nuclei_box``). A tile's nuclei and its ``tiles`` row are written in one transaction, so a run killed at any point
leaves only whole tiles and a resumed run skips exactly those (:meth:`NucleiStore.done_tiles`).

:meth:`NucleiStore.export_geojson` streams the nuclei to a QuPath-compatible FeatureCollection (detections with
their type as classification and their area as a measurement).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.core.errors import ToolCallError
from pathasst.tools.geojson import feature_properties

__all__ = ["Nucleus", "NucleiStore", "StoreMismatchError"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS types (code INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tiles (
    id INTEGER PRIMARY KEY, col INTEGER NOT NULL, row INTEGER NOT NULL,
    x0 REAL NOT NULL, y0 REAL NOT NULL, x1 REAL NOT NULL, y1 REAL NOT NULL,
    nuclei INTEGER NOT NULL, seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS nuclei (
    id INTEGER PRIMARY KEY, tile INTEGER NOT NULL REFERENCES tiles(id),
    x REAL NOT NULL, y REAL NOT NULL, area_um2 REAL NOT NULL, type INTEGER NOT NULL, outline BLOB NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS nuclei_box USING rtree(id, min_x, max_x, min_y, max_y);
"""


class StoreMismatchError(ToolCallError):
    """The store holds a run of another slide or with other settings (resume refused)."""


@dataclass
class Nucleus:
    """One nucleus as stored: centroid and outline in level-0 pixels."""

    id: int
    x: float
    y: float
    area_um2: float
    type: str
    outline: np.ndarray

    def feature(self) -> dict[str, Any]:
        """This nucleus as a QuPath GeoJSON detection (closed ring; its type as the classification)."""
        ring = self.outline.astype(np.float64).round(2).tolist()
        ring.append(ring[0])
        measurements = {"Area um^2": round(self.area_um2, 2), "Centroid X px": round(self.x, 2),
                        "Centroid Y px": round(self.y, 2)}
        return {"type": "Feature", "id": f"nucleus-{self.id}", "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": feature_properties(self.type, "detection", measurements)}

class NucleiStore:
    """A slide run's SQLite store (created on first use; WAL journal, so readers see finished tiles only)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> NucleiStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- run metadata ----------------------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}

    def bind(self, signature: dict[str, Any], type_names: list[str], restart: bool = False) -> None:
        """Tie the store to a run: a new store records ``signature``; one holding the same signature is resumed; one
        holding another is refused (:class:`StoreMismatchError`) unless ``restart``, which empties it first."""
        old = self.meta().get("signature")
        if old is not None and old != json.loads(json.dumps(signature)):
            if not restart:
                diff = sorted(k for k in set(old) | set(signature) if old.get(k) != signature.get(k))
                raise StoreMismatchError(
                    f"{self.path} holds a run of another slide or with other settings (differs in {diff}); "
                    "nothing was changed: use another output folder, or --restart to discard it"
                )
            self._db.executescript("BEGIN; DELETE FROM nuclei; DELETE FROM nuclei_box; DELETE FROM tiles; "
                                   "DELETE FROM meta; DELETE FROM types; COMMIT;")
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('signature', ?)", (json.dumps(signature),))
            self._db.executemany("INSERT OR REPLACE INTO types VALUES (?, ?)", list(enumerate(type_names)))

    def set_meta(self, key: str, value: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction: committed when the block ends, rolled back when it raises."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ---- writing ---------------------------------------------------------------------------------------------------
    def done_tiles(self) -> set[int]:
        return {r[0] for r in self._db.execute("SELECT id FROM tiles")}

    def add_tile(self, index: int, col: int, row: int, core: tuple[float, float, float, float],
                 nuclei: list[tuple[float, float, float, int, np.ndarray]], seconds: float) -> None:
        """Write one finished tile and its nuclei (``(x, y, area_um2, type code, outline (k, 2))``) atomically."""
        with self._transaction():
            self._db.execute("INSERT INTO tiles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (index, col, row, *map(float, core), len(nuclei), float(seconds)))
            for x, y, area, code, outline in nuclei:
                cur = self._db.execute(
                    "INSERT INTO nuclei (tile, x, y, area_um2, type, outline) VALUES (?, ?, ?, ?, ?, ?)",
                    (index, float(x), float(y), float(area), int(code),
                     np.ascontiguousarray(outline, dtype=np.float32).tobytes()),
                )
                lo, hi = outline.min(0), outline.max(0)
                self._db.execute("INSERT INTO nuclei_box VALUES (?, ?, ?, ?, ?)",
                                 (cur.lastrowid, float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])))

    # ---- reading ---------------------------------------------------------------------------------------------------
    def type_names(self) -> dict[int, str]:
        return dict(self._db.execute("SELECT code, name FROM types"))

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM nuclei").fetchone()[0])

    def composition(self) -> dict[str, int]:
        names = self.type_names()
        rows = self._db.execute("SELECT type, count(*) FROM nuclei GROUP BY type ORDER BY type")
        return {names.get(code, str(code)): int(n) for code, n in rows}

    def centroids(self) -> np.ndarray:
        """``(n, 3)`` float64: x, y (level 0), type code of every nucleus."""
        rows = self._db.execute("SELECT x, y, type FROM nuclei ORDER BY id").fetchall()
        return np.array(rows, dtype=np.float64).reshape(-1, 3)

    def iter_centroids(self, chunk: int = 100_000) -> Iterator[np.ndarray]:
        """The nuclei's ``(x, y)`` in chunks of ``(n, 2)`` float64 arrays (memory bounded by ``chunk``)."""
        cur = self._db.execute("SELECT x, y FROM nuclei")
        while rows := cur.fetchmany(chunk):
            yield np.array(rows, dtype=np.float64)

    def tile_seconds(self) -> float:
        return float(self._db.execute("SELECT coalesce(sum(seconds), 0) FROM tiles").fetchone()[0])

    def _nuclei(self, where: str = "", params: tuple = ()) -> Iterator[Nucleus]:
        names = self.type_names()
        rows = self._db.execute(
            "SELECT n.id, n.x, n.y, n.area_um2, n.type, n.outline FROM nuclei n "
            f"{where} ORDER BY n.id", params)
        for i, x, y, area, code, blob in rows:
            yield Nucleus(i, x, y, area, names.get(code, str(code)), np.frombuffer(blob, np.float32).reshape(-1, 2))

    def nuclei_in(self, x0: float, y0: float, x1: float, y1: float) -> Iterator[Nucleus]:
        """The nuclei whose outline's box meets the level-0 rectangle ``(x0, y0)-(x1, y1)`` (R*Tree lookup)."""
        return self._nuclei("JOIN nuclei_box b ON n.id = b.id WHERE b.max_x >= ? AND b.min_x <= ? AND b.max_y >= ? "
                            "AND b.min_y <= ?", (x0, x1, y0, y1))

    def export_geojson(self, path: Path) -> int:
        """Write every nucleus to ``path`` as a QuPath GeoJSON FeatureCollection, streamed (memory does not grow
        with the slide), via a temporary file renamed into place; returns the number of features."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        n = 0
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write('{"type": "FeatureCollection", "features": [\n')
            for nucleus in self._nuclei():
                feature = nucleus.feature()
                fh.write((",\n" if n else "") + json.dumps(feature))
                n += 1
            fh.write("\n]}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return n
