"""The metadata store: one SQLite database holding every indexed item, its files, its vector and its slots.

An item is one distinct image content (keyed by content hash); a file is a path that holds it, so two
copies of a picture share one vector and a moved file keeps its item. The vectors live here too, which
makes this database the source of truth: the FAISS file is derived from it and can always be rebuilt.
Each batch is one transaction, so a crash loses at most the batch in flight and never half of one.

Beside its vector an item may keep a few "object slots" (an (n_slots, slot_dim) array, n_slots 0..16) so that
search can re-rank candidates without reading images. They are stored as little-endian float16 bytes; the
number of rows is implicit in the blob's length (``len(blob) / (2 * slot_dim)``), and NULL means none.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from mmodal.indexes.errors import IndexCorruptedError

METADATA_FILE = "metadata.sqlite"
MAX_SLOTS = 16
SLOT_DTYPE = np.dtype("<f2")  # little-endian float16 on disk, whatever the machine

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    content_hash TEXT NOT NULL UNIQUE,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    format TEXT,
    vector BLOB NOT NULL,
    added REAL NOT NULL,
    slots BLOB
);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    item_id INTEGER NOT NULL REFERENCES items(id),
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    seen REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_item ON files(item_id);
CREATE TABLE IF NOT EXISTS skipped (
    path TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS roots (path TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS properties (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def present_slots(slots: np.ndarray | None) -> np.ndarray | None:
    """The slots that hold an object (presence, column 0, above zero): what the index stores of a model's padded
    slots. None stays None."""
    return None if slots is None else slots[slots[:, 0] > 0]


@dataclass(frozen=True)
class ImageFile:
    """An image file as the index records it: where it is, its content's hash, its size on disk and in pixels."""

    path: str
    content_hash: str
    size: int
    mtime_ns: int
    width: int
    height: int
    format: str | None


@dataclass(frozen=True)
class NewItem(ImageFile):
    """An image the model has just encoded, ready to be stored."""

    vector: np.ndarray  # (D,) float32
    slots: np.ndarray | None = None  # (n_slots, slot_dim) float32, n_slots 0..16; None when the model gave none

    @classmethod
    def encoded(cls, file: ImageFile, vector: np.ndarray, slots: np.ndarray | None = None) -> NewItem:
        return cls(**{f.name: getattr(file, f.name) for f in fields(ImageFile)}, vector=vector, slots=slots)


@dataclass(frozen=True)
class ItemInfo:
    id: int
    paths: list[str]
    content_hash: str
    width: int
    height: int
    format: str | None


class MetadataStore:
    def __init__(self, path: Path, dim: int, slot_dim: int = 0):
        self.path = path
        self.dim = dim
        self.slot_dim = slot_dim
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE … COMMIT) so a batch lands whole.
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            # Damage found now is named now, not halfway through a run or a search.
            problems = [row[0] for row in self.db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(problems[:3]))
            self.db.executescript(SCHEMA)
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(items)")}
            if "slots" not in columns:  # CREATE TABLE IF NOT EXISTS leaves an older table as it was
                raise IndexCorruptedError(
                    f"{path} was written by an older mmodal (its items have no object slots); "
                    "re-index the collection into a new folder."
                )
        except sqlite3.DatabaseError as error:
            self.db.close()
            raise IndexCorruptedError(
                f"{path} is damaged ({error}). It holds every indexed vector, so mmodal leaves it as it is. "
                f"Save what SQLite can read with `sqlite3 {path} .recover | sqlite3 recovered.sqlite`, then put "
                f"recovered.sqlite in its place (and delete {path.name}-wal beside it); or re-index the collection "
                "into a new folder."
            ) from None
        except BaseException:
            self.db.close()
            raise

    def get_property(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM properties WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_property(self, key: str, value: str) -> None:
        with self._transaction():
            self.db.execute("INSERT OR REPLACE INTO properties (key, value) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self.db.close()

    # ----------------------------------------------------------------------------------------- reading

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def file_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM files").fetchone()[0]

    def file_state(self, path: str) -> tuple[int, int] | None:
        """(size, mtime_ns) recorded for an indexed or skipped path, or None when it is new."""
        row = self.db.execute("SELECT size, mtime_ns FROM files WHERE path = ?", (path,)).fetchone()
        if row is None:
            row = self.db.execute("SELECT size, mtime_ns FROM skipped WHERE path = ?", (path,)).fetchone()
        return tuple(row) if row else None

    def item_for_hash(self, content_hash: str) -> int | None:
        row = self.db.execute("SELECT id FROM items WHERE content_hash = ?", (content_hash,)).fetchone()
        return row[0] if row else None

    def ids(self) -> np.ndarray:
        return np.fromiter((r[0] for r in self.db.execute("SELECT id FROM items ORDER BY id")), dtype=np.int64)

    def vectors(self, ids: Iterable[int] | None = None, chunk: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Streams (ids, vectors) in chunks, all items or the given ones, so memory stays bounded."""
        if ids is None:
            cursor = self.db.execute("SELECT id, vector FROM items ORDER BY id")
            while rows := cursor.fetchmany(chunk):
                yield self._unpack(rows)
            return
        ids = list(ids)
        for start in range(0, len(ids), 500):  # SQLite caps the number of bound parameters
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = self.db.execute(f"SELECT id, vector FROM items WHERE id IN ({marks}) ORDER BY id", part).fetchall()
            if rows:
                yield self._unpack(rows)

    def _unpack(self, rows) -> tuple[np.ndarray, np.ndarray]:
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), self.dim)
        return ids, vectors

    def slots(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Each found item's object slots as a float32 (n_slots, slot_dim) array; (0, slot_dim) when it has none.

        Ids not in the store are left out of the answer.
        """
        ids = [int(i) for i in ids]
        found: dict[int, np.ndarray] = {}
        for start in range(0, len(ids), 500):  # SQLite caps the number of bound parameters
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            for item_id, blob in self.db.execute(f"SELECT id, slots FROM items WHERE id IN ({marks})", part):
                found[item_id] = self._unpack_slots(blob)
        return found

    def _unpack_slots(self, blob: bytes | None) -> np.ndarray:
        if not blob or self.slot_dim == 0:
            return np.zeros((0, self.slot_dim), dtype=np.float32)
        return np.frombuffer(blob, dtype=SLOT_DTYPE).reshape(-1, self.slot_dim).astype(np.float32)

    def _pack_slots(self, slots: np.ndarray | None) -> bytes | None:
        if slots is None:
            return None
        slots = np.asarray(slots)
        if slots.ndim != 2 or slots.shape[1] != self.slot_dim or not 0 <= slots.shape[0] <= MAX_SLOTS:
            raise ValueError(
                f"object slots of shape {slots.shape} do not fit this index: it takes up to {MAX_SLOTS} slots "
                f"of {self.slot_dim} values each, as an (n_slots, {self.slot_dim}) array"
            )
        if self.slot_dim == 0 and slots.shape[0]:
            raise ValueError("this index stores no object slots (its model's slot_dim is 0)")
        with np.errstate(over="ignore"):  # overflow is reported below, as an error rather than a warning
            packed = slots.astype(SLOT_DTYPE)
        if not np.isfinite(packed).all():
            raise ValueError("object slots hold values that are not finite as float16 (NaN, inf or beyond ±65504)")
        return packed.tobytes()

    def items(self, ids: Iterable[int]) -> dict[int, ItemInfo]:
        ids = list(ids)
        found: dict[int, ItemInfo] = {}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            for row in self.db.execute(
                f"SELECT id, content_hash, width, height, format FROM items WHERE id IN ({marks})", part
            ):
                found[row[0]] = ItemInfo(row[0], [], row[1], row[2], row[3], row[4])
            for item_id, path in self.db.execute(
                f"SELECT item_id, path FROM files WHERE item_id IN ({marks}) ORDER BY path", part
            ):
                found[item_id].paths.append(path)
        return found

    def paths_under(self, root: str) -> Iterator[str]:
        """Indexed and skipped paths inside ``root`` (a folder) or equal to it (a file)."""
        prefix = root.rstrip("/") + "/"
        for table in ("files", "skipped"):
            for (path,) in self.db.execute(
                f"SELECT path FROM {table} WHERE path = ? OR substr(path, 1, ?) = ?", (root, len(prefix), prefix)
            ):
                yield path

    def roots(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT path FROM roots ORDER BY path")]

    def skipped(self) -> list[tuple[str, str]]:
        return list(self.db.execute("SELECT path, reason FROM skipped ORDER BY path"))

    # ----------------------------------------------------------------------------------------- writing

    def write_batch(
        self,
        new_items: Iterable[NewItem] = (),
        relinked: Iterable[tuple[str, int, int, int]] = (),
        skipped: Iterable[tuple[str, str, int, int]] = (),
    ) -> list[int]:
        """Stores one batch in one transaction; returns the ids given to the new items.

        ``relinked`` are (path, item_id, size, mtime_ns) for files whose content is already indexed (a copy
        or a moved file); ``skipped`` are (path, reason, size, mtime_ns).
        """
        now = time.time()
        ids = []
        with self._transaction():
            for item in new_items:
                vector = np.ascontiguousarray(item.vector, dtype=np.float32)
                if vector.shape != (self.dim,):
                    raise ValueError(f"vector of shape {vector.shape} does not fit a {self.dim}-d index")
                slots = self._pack_slots(item.slots)
                existing = self.item_for_hash(item.content_hash)
                if existing is None:  # a known content keeps its item, vector and slots
                    cursor = self.db.execute(
                        "INSERT INTO items (content_hash, width, height, format, vector, added, slots)"
                        " VALUES (?,?,?,?,?,?,?)",
                        (item.content_hash, item.width, item.height, item.format, vector.tobytes(), now, slots),
                    )
                    existing = cursor.lastrowid
                    ids.append(existing)
                self._link(item.path, existing, item.size, item.mtime_ns, now)
            for path, item_id, size, mtime_ns in relinked:
                self._link(path, item_id, size, mtime_ns, now)
            for path, reason, size, mtime_ns in skipped:
                self._unlink(path)
                self.db.execute(
                    "INSERT OR REPLACE INTO skipped (path, reason, size, mtime_ns) VALUES (?,?,?,?)",
                    (path, reason, size, mtime_ns),
                )
        return ids

    def remove_paths(self, paths: Iterable[str]) -> int:
        """Forgets files (gone from disk); items left with no file are deleted. Returns items deleted."""
        with self._transaction():
            orphans = 0
            for path in paths:
                self.db.execute("DELETE FROM skipped WHERE path = ?", (path,))
                orphans += self._unlink(path)
        return orphans

    def add_roots(self, roots: Iterable[str]) -> None:
        with self._transaction():
            self.db.executemany("INSERT OR IGNORE INTO roots (path) VALUES (?)", [(r,) for r in roots])

    def _link(self, path: str, item_id: int, size: int, mtime_ns: int, now: float) -> None:
        self._unlink(path, keep=item_id)
        self.db.execute("DELETE FROM skipped WHERE path = ?", (path,))
        self.db.execute(
            "INSERT OR REPLACE INTO files (path, item_id, size, mtime_ns, seen) VALUES (?,?,?,?,?)",
            (path, item_id, size, mtime_ns, now),
        )

    def _unlink(self, path: str, keep: int | None = None) -> int:
        """Drops a path's file row; deletes its item when no other file holds it (unless it is ``keep``)."""
        row = self.db.execute("SELECT item_id FROM files WHERE path = ?", (path,)).fetchone()
        if row is None:
            return 0
        self.db.execute("DELETE FROM files WHERE path = ?", (path,))
        item_id = row[0]
        if item_id == keep or self.db.execute("SELECT 1 FROM files WHERE item_id = ?", (item_id,)).fetchone():
            return 0
        self.db.execute("DELETE FROM items WHERE id = ?", (item_id,))
        return 1

    def _transaction(self):
        return _Transaction(self.db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, value, traceback):
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        return False
