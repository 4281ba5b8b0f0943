"""A gallery index on disk that records which model wrote each vector, behind the guard.

A folder holds ``index.json`` (the factory string, dimension, label map, search settings, the
models' names, a history of every change with the reports or overrides that allowed it, and the
generation of the two data files it goes with), ``index-<generation>.faiss`` (faiss, inner
product on unit vectors; its ids are the rows of the items table) and ``items-<generation>.parquet``
(per row: the item's ``id``, ``label`` and the ``model_id`` whose vector the index holds for it).
A change writes the next generation's two files, then replaces ``index.json`` atomically, then
removes the others: a write cut short at any point leaves the index as it was before it (the new
files unreferenced, removed by the next change); a reader that meets a generation removed while
it read takes the new one. One writer at a time (``pipeline.atomic.one_writer``), refused when
the index changed since it opened it.
Adding an embeddings set replaces the vectors of the items it holds (a backfill step) and
appends the others; adding another model's vectors and searching with another model's queries
pass through ``pipeline.index.guard``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from pipeline.atomic import one_writer, write_atomic, write_table_atomic, write_text_atomic
from pipeline.config.index import SERVING_KINDS, MixedIndexConfig, factory_string
from pipeline.data.embeddings import EmbeddingSet, positions
from pipeline.index.guard import ModelRef, guard
from pipeline.score import unit32

META_FILE = "index.json"


@dataclass
class GalleryIndex:
    folder: Path
    index: faiss.Index
    items: pd.DataFrame  # id, label, model_id: one row per faiss id
    meta: dict

    @property
    def held(self) -> list[ModelRef]:
        """The models whose vectors the index holds, in the order they first arrived."""
        present = list(dict.fromkeys(self.items.model_id))
        unnamed = [model_id for model_id in present if model_id not in self.meta["models"]]
        if unnamed:
            raise ValueError(f"{self.folder}: items of model ids {unnamed} that {META_FILE} does not name")
        return [ModelRef(model_id, name) for model_id, name in self.meta["models"].items() if model_id in present]

    def save(self) -> None:
        """The next generation's files, then ``index.json`` naming them, then the old ones removed."""
        import pyarrow as pa

        generation = int(self.meta.get("generation", -1)) + 1
        write_atomic(_index_file(self.folder, generation),
                     lambda temporary: faiss.write_index(self.index, str(temporary)))
        write_table_atomic(pa.Table.from_pandas(self.items, preserve_index=False), _items_file(self.folder, generation))
        self.meta.update(generation=generation, rows=len(self.items))
        write_text_atomic(self.folder / META_FILE, json.dumps(self.meta, indent=1))
        current = {_index_file(self.folder, generation).name, _items_file(self.folder, generation).name}
        for stale in [*self.folder.glob("index-*.faiss"), *self.folder.glob("items-*.parquet")]:
            if stale.name not in current:  # the previous generation, or one a cut write left
                stale.unlink(missing_ok=True)


def _index_file(folder: Path, generation: int) -> Path:
    return folder / f"index-{generation:06d}.faiss"


def _items_file(folder: Path, generation: int) -> Path:
    return folder / f"items-{generation:06d}.parquet"


def _model(embeddings: EmbeddingSet) -> ModelRef:
    return ModelRef(embeddings.model_id, embeddings.model_name)


def create_index(embeddings: EmbeddingSet, folder: str | Path, kind: str,
                 config: MixedIndexConfig = MixedIndexConfig()) -> GalleryIndex:
    """An index of ``kind`` trained on and holding ``embeddings`` (the gallery as it is served)."""
    if kind not in SERVING_KINDS:
        raise ValueError(f"index kind {kind!r}: one of {SERVING_KINDS} (their vectors can be replaced by a backfill)")
    folder = Path(folder)
    if (folder / META_FILE).exists():
        raise FileExistsError(f"{folder}: an index is already there ({META_FILE}); add to it, or choose another folder")
    vectors = unit32(embeddings.vectors)
    factory = factory_string(config, kind, embeddings.dim, len(embeddings))
    index = faiss.index_factory(embeddings.dim, f"IDMap2,{factory}" if kind == "flat" else factory,
                                faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
    if kind != "flat":  # stored with the index, for any reader of its file
        faiss.extract_index_ivf(index).nprobe = config.nprobe
    items = pd.DataFrame({"id": embeddings.ids.astype(str), "label": embeddings.labels,
                          "model_id": embeddings.model_id})
    meta = {"factory": factory, "kind": kind, "dim": embeddings.dim, "classes": embeddings.classes,
            "nprobe": config.nprobe, "trained_on": embeddings.model_id,
            "models": {embeddings.model_id: embeddings.model_name},
            "history": [{"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "action": "create", "model": embeddings.model_id,
                         "set": embeddings.path, "rows": len(items)}]}
    built = GalleryIndex(folder, index, items, meta)
    with one_writer(folder):
        if (folder / META_FILE).exists():  # built by another process meanwhile
            raise FileExistsError(f"{folder}: an index is already there ({META_FILE}); add to it, or choose another "
                                  "folder")
        folder.mkdir(parents=True, exist_ok=True)
        built.save()
    return built


def open_index(folder: str | Path) -> GalleryIndex:
    """The index in ``folder``, its three files checked to agree."""
    folder = Path(folder)
    if not (folder / META_FILE).is_file():
        raise FileNotFoundError(f"{folder}: no gallery index ({META_FILE}); create one with jobs.index build")
    for attempt in range(3):  # a writer may commit the next generation and remove this one meanwhile
        meta = json.loads((folder / META_FILE).read_text())
        if "generation" not in meta:
            raise ValueError(f"{folder}: an index written before its files had generations; build it again")
        index_file, items_file = _index_file(folder, meta["generation"]), _items_file(folder, meta["generation"])
        try:
            index, items = faiss.read_index(str(index_file)), pd.read_parquet(items_file)
            break
        except (RuntimeError, OSError):
            if json.loads((folder / META_FILE).read_text()).get("generation") == meta["generation"]:
                missing = [path.name for path in (index_file, items_file) if not path.is_file()]
                raise FileNotFoundError(f"{folder}: {META_FILE} names {', '.join(missing) or index_file.name}, "
                                        "which is missing or unreadable (removed by hand?); build the index again")
    else:
        raise ValueError(f"{folder}: changed by writers three times while being read; try again")
    if not index.ntotal == len(items) == meta["rows"]:
        raise ValueError(f"{folder}: {index_file.name} holds {index.ntotal} vectors, {items_file.name} {len(items)} "
                         f"items, {META_FILE} says {meta['rows']}; build the index again")
    return GalleryIndex(folder, index, items, meta)


def _check_set(gallery: GalleryIndex, embeddings: EmbeddingSet) -> None:
    if embeddings.dim != gallery.meta["dim"]:
        raise ValueError(f"{embeddings.path}: {embeddings.dim}-d vectors, the index {gallery.folder} holds "
                         f"{gallery.meta['dim']}-d ones")
    if embeddings.classes != gallery.meta["classes"]:
        raise ValueError(f"{embeddings.path}: encoded from a dataset with another label map than the index "
                         f"{gallery.folder}'s")


def add_vectors(gallery: GalleryIndex, embeddings: EmbeddingSet, ids: list[str] | None = None,
                reports: list[pd.DataFrame] = (), override: str | None = None) -> dict:
    """Put ``embeddings``' vectors of ``ids`` (default: all) into the index: items it holds get
    the new vector (a backfill step), others are appended. Guarded (``pipeline.index.guard``):
    the arriving model against every model the index holds. Returns the history record (no
    change, and none recorded, when ``ids`` is empty)."""
    _check_set(gallery, embeddings)
    arriving = _model(embeddings)
    ids = embeddings.ids if ids is None else np.asarray(ids, dtype=object)
    if not len(ids):
        return {"action": "add", "model": arriving.id, "set": embeddings.path, "replaced": 0, "appended": 0}
    if not pd.Index(ids).is_unique:
        raise ValueError(f"{embeddings.path}: the ids to add repeat {pd.Index(ids)[pd.Index(ids).duplicated()][0]!r}")
    with _writing(gallery):
        record = _add(gallery, embeddings, arriving, ids, list(reports), override)
    return record


def read_order(path: str | Path) -> pd.DataFrame:
    """A backfill order file (``jobs.index order``: columns id and rank), by rank."""
    order = pd.read_csv(path, dtype={"id": str})
    if not {"id", "rank"} <= set(order.columns):
        raise ValueError(f"{path}: an order needs the columns id and rank (jobs.index order), has "
                         f"{list(order.columns)}")
    return order.sort_values("rank", kind="stable")


def ids_to_add(gallery: GalleryIndex, embeddings: EmbeddingSet, order: pd.DataFrame | None,
               share: float = 1.0) -> np.ndarray | None:
    """The ids of one backfill step: the first ``share`` of ``order`` that ``embeddings``' model
    does not hold yet (so that a rerun adds only what is missing); None without an order: all."""
    if not 0 < share <= 1:
        raise ValueError(f"share {share}: a share of the order in (0, 1]")
    if order is None:
        if share != 1:
            raise ValueError(f"share {share} takes the first share of an order: give an order")
        return None
    ids = order.id.to_numpy()[: int(round(share * len(order)))]
    held = gallery.items.set_index("id").model_id.reindex(ids)
    return ids[held.to_numpy() != embeddings.model_id]


@contextmanager
def _writing(gallery: GalleryIndex) -> Iterator[None]:
    """The index's writer lock, with the files on disk still those ``gallery`` was read from."""
    with one_writer(gallery.folder):
        on_disk = json.loads((gallery.folder / META_FILE).read_text())
        if on_disk != gallery.meta:  # a commit, or an override recorded by a search
            raise ValueError(f"{gallery.folder}: changed by another writer since it was opened (generation "
                             f"{gallery.meta['generation']} -> {on_disk['generation']}, {len(on_disk['history'])} "
                             "history records); open it again")
        yield


def _add(gallery: GalleryIndex, embeddings: EmbeddingSet, arriving: ModelRef, ids: np.ndarray,
         reports: list[pd.DataFrame], override: str | None) -> dict:
    overrides = guard("add vectors to the index", arriving, gallery.held, reports, str(gallery.folder), override)
    rows = positions(embeddings.ids, ids, embeddings.path)
    vectors, labels = unit32(embeddings.vectors[rows]), embeddings.labels[rows]
    where = pd.Index(gallery.items.id).get_indexer(np.asarray(ids, dtype=str))
    held = where >= 0
    if (gallery.items.label.to_numpy()[where[held]] != labels[held]).any():
        first = int(np.flatnonzero(gallery.items.label.to_numpy()[where[held]] != labels[held])[0])
        raise ValueError(f"{embeddings.path}: item {ids[held][first]!r} has label {labels[held][first]}, the index "
                         f"{gallery.folder} holds it with label {gallery.items.label.iloc[where[held][first]]}")
    new_rows = np.arange(len(gallery.items), len(gallery.items) + int((~held).sum()), dtype=np.int64)
    faiss_ids = np.concatenate([where[held], new_rows]).astype(np.int64)
    if held.any():
        gallery.index.remove_ids(faiss_ids[: held.sum()])
    gallery.index.add_with_ids(np.concatenate([vectors[held], vectors[~held]]), faiss_ids)
    items = pd.concat([gallery.items, pd.DataFrame({"id": np.asarray(ids[~held], dtype=str), "label": labels[~held],
                                                    "model_id": arriving.id})], ignore_index=True)
    items.loc[where[held], "model_id"] = arriving.id
    gallery.items = items
    gallery.meta["models"][arriving.id] = arriving.name
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "action": "add", "model": arriving.id,
              "set": embeddings.path, "replaced": int(held.sum()), "appended": int((~held).sum()),
              "reports": sorted({str(t.report.iloc[0]) for t in reports}), "overrides": overrides}
    gallery.meta["history"].append(record)
    gallery.save()
    return record


def search_index(gallery: GalleryIndex, queries: EmbeddingSet, k: int, reports: list[pd.DataFrame] = (),
                 override: str | None = None) -> pd.DataFrame:
    """The ``k`` nearest items of each query: one row per (query, rank) with the item's id, its
    score and the model that wrote its vector. Guarded: the queries' model against every model
    the index holds."""
    _check_set(gallery, queries)
    overrides = guard("search the index", _model(queries), gallery.held, list(reports), str(gallery.folder), override)
    if overrides:
        with _writing(gallery):
            gallery.meta["history"].append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "action": "search",
                                            "model": queries.model_id, "set": queries.path, "overrides": overrides})
            write_text_atomic(gallery.folder / META_FILE, json.dumps(gallery.meta, indent=1))
    scores, found = gallery.index.search(unit32(queries.vectors), k)
    rank = np.tile(np.arange(1, k + 1), len(queries))
    hits = found.reshape(-1)
    valid = hits >= 0
    items = gallery.items.iloc[hits[valid]]
    return pd.DataFrame({"query_id": np.repeat(queries.ids.astype(str), k)[valid], "rank": rank[valid],
                         "id": items.id.to_numpy(), "score": scores.reshape(-1)[valid],
                         "model_id": items.model_id.to_numpy()})
