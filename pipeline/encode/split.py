"""Batch encoding of a dataset split with one model, on Ray Data.

The dataset's Parquet files are read and their images decoded in Ray Data tasks, one per file
(``pipeline.data.decode.decode_file``, at the model's declared input), which feed an actor pool
whose actors each hold the model once (``BatchEncoder``: any ``pipeline.model.encoders``
encoder, a project artifact, TorchScript, ONNX or timm); the driver only receives the
embeddings. A model known only by its embeddings is not run: its team's set of the split is
converted to this project's contract (``pipeline.data.external``) under the same folder rules.
Decoding in tasks of its own overlaps the actors' start-up (a process importing torch: seconds)
and their inference, and on a GPU node keeps the CPUs' work off the GPU actor (CPU actors
reserving a whole decoding task's CPUs decode their files themselves instead: ``FileEncoder``).
Each input file becomes one output part file (written to a temporary name, then renamed) whose
metadata names its source, so that a job killed midway and run again encodes only the files not
done yet and ends with the same files as a run that was never interrupted. No process holds
more than a few files' images.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
import torch

from pipeline.atomic import one_writer, write_text_atomic
from pipeline.config import EmbeddingsSource, EncodeConfig, Preprocessing
from pipeline.data.bad_rows import BadRows, DataError
from pipeline.data.dataset import DatasetInfo, read_dataset_info, split_files
from pipeline.data.decode import decode_file
from pipeline.data.embeddings import META_KEY, EmbeddingSet, embeddings_table, read_embeddings, write_embeddings
from pipeline.data.external import external_split
from pipeline.model.card import EncoderCard, ImportedCard, read_encoder_card
from pipeline.model.encoders import load_encoder
from pipeline.runtime import in_terminal

log = logging.getLogger(__name__)
COMPLETE_MARKER = "_COMPLETE.json"  # written last: what was encoded, by which model, what was skipped
DECODE_CPUS = 1  # each decoding task's reservation: it decodes one image at a time


class BatchEncoder:
    """Ray Data callable class: decoded images in (``pipeline.data.decode.decode_file``), unnormalised
    embeddings out; bad rows pass through with a zero vector and their ``problem``."""

    def __init__(self, model_dir: str, threads: int = 1) -> None:
        torch.set_num_threads(max(1, threads))
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.encoder, _ = load_encoder(model_dir, device, threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        good = batch["problem"] == ""
        vectors = np.zeros((len(good), self.encoder.dim), dtype=np.float32)
        if good.any():
            vectors[good] = self.encoder(batch["pixels"][good])
        return {"id": batch["id"], "label": batch["label"], "embedding": vectors, "problem": batch["problem"],
                "path": batch["path"]}


class FileEncoder:
    """Ray Data callable class of the actors that decode their files themselves (CPU actors that
    reserve what a decoding task would: ``decodes_itself``): one input file's path in, its rows'
    embeddings out, ``decode_file``'s batches of ``rows_per_batch`` one after the other."""

    def __init__(self, model_dir: str, threads: int, info: DatasetInfo, preprocessing: Preprocessing,
                 rows_per_batch: int) -> None:
        self.encode = BatchEncoder(model_dir, threads)
        self.info, self.preprocessing, self.rows_per_batch = info, preprocessing, rows_per_batch

    def __call__(self, files: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for batch in decode_file(files, self.info, self.preprocessing, self.rows_per_batch):
            yield self.encode(batch)


def part_name(index: int) -> str:
    """The output part of the ``index``-th input file (in sorted order)."""
    return f"part-{index:05d}.parquet"


def source_stamp(file: Path) -> str:
    """An input file as its part's metadata names it: path, size and modification time, so that
    a re-ingested dataset is encoded again."""
    stat = file.stat()
    return f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _finished_part(path: Path, model_id: str, source: Path, on_bad_rows: str) -> bool:
    """Whether ``path`` holds the part of ``source`` encoded by ``model_id`` under ``on_bad_rows``."""
    if not path.is_file():
        return False
    meta = json.loads((pq.read_schema(path).metadata or {}).get(META_KEY, b"{}"))
    return (meta.get("model_id"), meta.get("source"), meta.get("on_bad_rows")) == \
        (model_id, source_stamp(source), on_bad_rows)


def encode_split(model_dir: str | Path, dataset_root: str | Path, split: str, out_dir: str | Path,
                 options: EncodeConfig = EncodeConfig()) -> Path:
    """Encode ``split`` of the dataset with the model at ``model_dir`` into ``out_dir``, laid out
    as ``options`` says.

    Input files whose part is already in ``out_dir`` (same model, same input file, same policy)
    are not encoded again: a finished encoding is reused (its folder left untouched), an
    interrupted one completed. Threads of one job on one folder take turns (``one_writer``): the
    second waits and then finds the folder complete; another job writing it is refused.
    ``options.on_bad_rows`` is ``pipeline.data.bad_rows``'s policy.

    ``threads_per_actor`` may exceed ``cpus_per_actor``: the actors share the cores with the
    decoding tasks, which reserve ``DECODE_CPUS`` each. CPU actors reserving exactly as much as
    a decoding task decode their files themselves (``decodes_itself``), where decoding no longer
    overlaps the actor's start-up or inference (at 1e5 images with one actor, 0.85 of the plain
    loop's rate against 1.0 apart, ``bench/ray_data.py`` before 4e868da); hence the default of
    half a CPU.
    """
    card = read_encoder_card(model_dir)
    if isinstance(card, ImportedCard) and isinstance(card.source, EmbeddingsSource):
        return _convert_external(card, dataset_root, split, Path(out_dir))
    load_encoder(model_dir)  # fail fast, on the driver, on a bad artifact
    info = read_dataset_info(dataset_root)
    if card.classes and not set(card.classes) <= set(info.classes):
        raise ValueError(f"{model_dir}: model classes {sorted(set(card.classes) - set(info.classes))} "
                         f"are not in the dataset {dataset_root}")
    BadRows(options.on_bad_rows, str(dataset_root))  # an unknown policy fails before any work
    use_gpu = options.use_gpu if options.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0
    inputs = [Path(file) for file in split_files(dataset_root, split)]
    if sum(pq.read_metadata(file).num_rows for file in inputs) == 0:
        raise DataError(f"{Path(dataset_root) / split}: no rows to encode (its Parquet files are empty)")
    out_dir = Path(out_dir)
    parts = {file.name: out_dir / part_name(index) for index, file in enumerate(inputs)}
    with one_writer(out_dir):  # a second thread on this folder waits, then finds it complete
        finished = {file.name for file in inputs
                    if _finished_part(parts[file.name], card.id, file, options.on_bad_rows)}
        todo = [file for file in inputs if file.name not in finished]
        if not todo and _already_complete(out_dir, card, dataset_root, split, set(parts.values())):
            log.info("encode %s/%s: already complete in %s", card.name, split, out_dir)
            return out_dir
        if todo:
            _check_layout(options.num_actors, options.cpus_per_actor, use_gpu)
        out_dir.mkdir(parents=True, exist_ok=True)
        kept = {parts[name] for name in finished}
        for stale in [*out_dir.glob(".*.tmp-*"), out_dir / COMPLETE_MARKER, *set(out_dir.glob("*.parquet")) - kept]:
            stale.unlink(missing_ok=True)  # partial files of a killed run, parts of another model or input
        if finished:
            log.info("encode %s/%s: %d of %d input files already encoded in %s, skipped", card.name, split,
                     len(finished), len(inputs), out_dir)
        if todo:
            embedded = embedding_stream(Path(model_dir), todo, info, card.preprocessing, options, use_gpu)
            _write_parts(embedded, {file.name: file for file in todo}, parts, card, info, options.on_bad_rows)
        return _complete(parts, card, dataset_root, split, out_dir)


def _convert_external(card: ImportedCard, dataset_root: str | Path, split: str, out_dir: Path) -> Path:
    """An embeddings-only model's set of ``split``: its team's file for that split, converted
    once (a complete folder is left untouched; callers take turns, as for an encoding)."""
    source = card.source.train if split == "train" else card.source.test
    with one_writer(out_dir):
        if _already_complete(out_dir, card, dataset_root, split, set(out_dir.glob("*.parquet"))):
            log.info("encode %s/%s: already complete in %s", card.name, split, out_dir)
            return out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*out_dir.glob(".*.tmp-*"), out_dir / COMPLETE_MARKER, *out_dir.glob("*.parquet")]:
            stale.unlink(missing_ok=True)
        parts = external_split(source, card.embedding_dim, dataset_root, split, card.id, card.name, out_dir)
        return _complete({part.name: part for part in parts}, card, dataset_root, split, out_dir)


def _already_complete(out_dir: Path, card: EncoderCard, dataset_root: str | Path, split: str, parts: set[Path]) -> bool:
    """Whether ``out_dir`` holds exactly ``parts`` and the marker of this model, dataset and split:
    then it is left as it is (not a file removed or rewritten)."""
    marker = out_dir / COMPLETE_MARKER
    if not marker.is_file() or set(out_dir.glob("*.parquet")) != parts:
        return False
    written = json.loads(marker.read_text())
    return (written.get("model_id"), written.get("dataset"), written.get("split")) == \
        (card.id, str(Path(dataset_root).resolve()), split)


def embedding_stream(model_dir: Path, files: list[Path], info: DatasetInfo, preprocessing: Preprocessing,
              options: EncodeConfig, use_gpu: bool) -> ray.data.Dataset:
    """The Ray Data pipeline over ``files``: decoding tasks feeding the model actors, or actors
    that decode their files themselves (``decodes_itself``)."""
    # Rows keep the files' order, so that each file's rows come back together and in order.
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = context.enable_progress_bars and in_terminal()  # bars in a terminal only
    # One decoding task per input file (Ray Data's Parquet reader packs small files into one
    # 128 MiB task): reading, encoding and writing overlap, and actors share the files.
    items = ray.data.from_items([{"path": str(file)} for file in files], override_num_blocks=len(files))
    decoding = {"info": info, "preprocessing": preprocessing, "rows_per_batch": options.batch_size}
    encoder = {"model_dir": str(model_dir.resolve()), "threads": options.threads_per_actor}
    actors = {"compute": ray.data.ActorPoolStrategy(size=options.num_actors), "batch_format": "numpy",
              "num_cpus": options.cpus_per_actor, "num_gpus": 1 if use_gpu else 0}
    if decodes_itself(options.cpus_per_actor, use_gpu):
        # One file a call. A decoding stage of the actors' resources would be fused into them by
        # Ray Data, which then hands each call batch_size input rows: that many files, all on one actor.
        return items.map_batches(FileEncoder, fn_constructor_kwargs={**encoder, **decoding}, batch_size=1, **actors)
    decoded = items.map_batches(decode_file, fn_kwargs=decoding, batch_size=1, batch_format="numpy",
                                num_cpus=DECODE_CPUS)
    return decoded.map_batches(BatchEncoder, fn_constructor_kwargs=encoder, batch_size=options.batch_size, **actors)


def decodes_itself(cpus_per_actor: float, use_gpu: bool) -> bool:
    """Whether the actors decode their files themselves (``FileEncoder``): CPU actors reserving
    what a decoding task would, whose decoding tasks would wait for CPUs the actors hold."""
    return not use_gpu and cpus_per_actor == DECODE_CPUS


def _check_layout(num_actors: int, cpus_per_actor: float, use_gpu: bool) -> None:
    """Refuse actors that leave no CPU for a decoding task, which would then wait for ever; actors
    that decode themselves (``decodes_itself``) need nothing more. Counts the CPUs the cluster has
    now (not what an autoscaler could add)."""
    if decodes_itself(cpus_per_actor, use_gpu):
        return
    cpus = ray.cluster_resources().get("CPU", 0)
    if num_actors * cpus_per_actor + DECODE_CPUS > cpus:
        raise ValueError(f"encode: {num_actors} actors x {cpus_per_actor:g} CPUs (num_actors x cpus_per_actor) "
                         f"leave less than the {DECODE_CPUS} CPU a decoding task needs: the cluster has {cpus:g} "
                         "CPUs now")


def _runs(names: list[str]) -> list[tuple[str, slice]]:
    """Consecutive runs of equal ``names``: (name, rows)."""
    runs, start = [], 0
    for row in range(1, len(names) + 1):
        if row == len(names) or names[row] != names[start]:
            runs.append((names[start], slice(start, row)))
            start = row
    return runs


def _write_parts(embedded: ray.data.Dataset, inputs: dict[str, Path], parts: dict[str, Path], card: EncoderCard,
                 info: DatasetInfo, on_bad_rows: str) -> None:
    """Consume ``embedded`` (rows of ``inputs``, in order), writing each input's part as soon as
    its last row is back; bad rows go through the ``on_bad_rows`` policy, named by their file."""
    received: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in inputs}
    started, rows = time.perf_counter(), 0  # rows: received so far

    def write_part(name: str) -> None:
        chunks = received.pop(name)
        columns = ("id", "label", "embedding", "problem")
        merged = ({key: np.concatenate([chunk[key] for chunk in chunks]) for key in columns} if chunks else
                  {"id": np.array([], dtype=object), "label": np.array([], dtype=np.int64),
                   "embedding": np.zeros((0, card.embedding_dim), np.float32),
                   "problem": np.array([], dtype=object)})
        bad = BadRows(on_bad_rows, str(inputs[name]))
        good = np.array([bad.keep(row_id, problem or None) for row_id, problem in zip(merged["id"], merged["problem"])],
                        dtype=bool)
        source = {"source": source_stamp(inputs[name]), "source_rows": len(good), "on_bad_rows": on_bad_rows,
                  "skipped": bad.summary()["rows"]}
        write_embeddings(parts[name], embeddings_table(merged["id"][good].tolist(), merged["label"][good],
                                                       merged["embedding"][good], card.id, card.name,
                                                       info.classes, source))
        log.info("encode %s: %s -> %s (%d rows; %d rows in %.0f s, %.0f rows/s)", card.name, name, parts[name].name,
                 len(good), rows, time.perf_counter() - started, rows / (time.perf_counter() - started))

    current = None
    for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
        for name, part_rows in _runs([Path(path).name for path in batch["path"]]):
            if current is not None and name != current:
                write_part(current)
            current = name
            received[name].append({key: values[part_rows] for key, values in batch.items()})
        rows += len(batch["id"])
    for name in list(received):  # the last file, and files without rows
        write_part(name)


def _complete(parts: dict[str, Path], card: EncoderCard, dataset_root: str | Path, split: str, out_dir: Path) -> Path:
    """Check the parts of a finished encoding and write its marker (rows, skipped rows)."""
    rows, skipped = 0, []
    for path in parts.values():
        part = pq.ParquetFile(path)  # the footer alone: row count and metadata
        rows += part.metadata.num_rows
        skipped += json.loads(part.schema_arrow.metadata[META_KEY])["skipped"]
    summary = BadRows("skip", str(dataset_root), [(e["id"], e["problem"]) for e in skipped]).summary()
    if rows == 0:
        detail = f" ({summary['skipped']} bad rows skipped: {summary['by_problem']})" if skipped else ""
        raise DataError(f"{Path(dataset_root) / split}: no rows to encode{detail}")
    marker = {"model_id": card.id, "dataset": str(Path(dataset_root).resolve()), "split": split, "rows": rows,
              "bad_rows": summary}
    write_text_atomic(out_dir / COMPLETE_MARKER, json.dumps(marker, indent=1))
    if skipped:
        log.warning("encode %s/%s: skipped %d bad rows %s (listed in %s)", card.name, split, len(skipped),
                    summary["by_problem"], out_dir / COMPLETE_MARKER)
    log.info("encode: %d embeddings of %s in %s", rows, card.name, out_dir)
    return out_dir


def train_split_embeddings(model: str | Path, dataset: str | Path, out_dir: str | Path,
                           encode: EncodeConfig = EncodeConfig()) -> EmbeddingSet:
    """A model's embeddings of the training split (``encode_split`` reuses those already written)."""
    return read_embeddings(encode_split(model, dataset, "train", out_dir, encode))
