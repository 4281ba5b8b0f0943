"""Training images streamed by Ray Data into the Ray Train workers (``ingest: stream``).

The driver hands the trainer a stream of the training split (``training_stream``, through
``datasets=``): one row per Parquet file, whose images Ray Data tasks on the cluster's CPUs
read, filter to the rows the model trains on (its classes, its seeded share, not the validation
rows), decode at the model's input and, with ``augment``, crop and flip on a draw of their own
(``pipeline.data.preprocess.train_pixels``); the old model's features of each row, when the
method reads them, join by id in the same task. Each worker reads its equal share
(``ray.train.get_dataset_shard``, ``DataConfig``'s streaming split) batch by batch
(``iter_torch_batches``): no worker holds its shard, and a GPU worker never decodes.

Every pass over a shard runs the stream again: Ray Data shuffles the files' order and draws,
per file, a number that seeds the order of its rows and each row's augmentation, from the fit's
seed and the pass's number (``RandomSeedConfig`` and ``expressions.random`` with
``reseed_after_execution``); each worker then shuffles rows in a buffer seeded by epoch and
pass. With one worker and order preserved, a run's batches are the same in every rerun. The
streaming split may hand rows to workers in another order each run when there are several; a
worker group restarted after a failure builds the stream again, whose passes then draw as the
run's first ones did (the buffer's seed still follows the epoch).

What a stream holds per process is bounded by a few files' rows, except the old features a
forward-manner method reads: each decoding process holds the old model's train-split
embeddings (``d`` floats per training image), which it joins by id.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.data.expressions import random

from pipeline.config import AugmentConfig, Preprocessing
from pipeline.data.bad_rows import DataError, label_problem
from pipeline.data.dataset import in_fraction, in_validation, read_dataset_info, split_files
from pipeline.data.decode import open_image
from pipeline.data.embeddings import read_embeddings
from pipeline.data.preprocess import eval_pixels, train_pixels, train_transform

STREAM = "train"         # the stream's name among the trainer's datasets
ROWS_PER_BATCH = 256     # rows a decoding task yields at a time (bounds its memory at any image size)
SHUFFLE_BATCHES = 8      # each worker's local shuffle buffer, in batches
SHARED_DECODE_TASKS = 2  # decoding tasks at once when they reserve no CPU (decode_cpus 0): Ray cannot count them


@dataclass(frozen=True)
class StreamSpec:
    """Which training rows a stream holds and how its tasks decode them."""

    dataset: str
    labels_kept: list[int]           # dataset labels the model trains on, in its label order
    fraction: float
    seed: int
    validation_fraction: float
    preprocessing: Preprocessing
    augment: AugmentConfig | None
    old_features: str | None         # the old model's train-split embeddings, joined by id
    decode_cpus: float = 1.0         # what the fit reserves for its decoding tasks (decoding_pool)

    def keeps(self, row_id: str, label: int) -> bool:
        """Whether the model trains on this row (the rule of ``pipeline.data.decode.load_split``)."""
        return (label in self.labels_kept and in_fraction(row_id, self.fraction, self.seed)
                and not in_validation(row_id, self.validation_fraction))


def check_decoding_room(reserved_cpus: float, decode_cpus: float) -> None:
    """Refuse a streamed fit whose workers leave its decoding tasks no CPU (``reserved_cpus``, the
    workers' and the decoding tasks', more than the cluster has): the first batch would never
    come. Counts the CPUs the cluster has now (not what an autoscaler could add)."""
    if decode_cpus == 0 or not ray.is_initialized():
        return
    cpus = ray.cluster_resources().get("CPU", 0)
    if reserved_cpus > cpus:
        raise ValueError(f"ingest stream: the workers and the decoding tasks take {reserved_cpus:g} CPUs "
                         f"(num_workers x cpus_per_worker + decode_cpus {decode_cpus:g}), more than the cluster's "
                         f"{cpus:g}; give the workers fewer, or decode_cpus: 0 to share theirs")


def selected_rows(spec: StreamSpec) -> int:
    """How many rows the stream holds (ids and labels read, no image); a bad label stops, naming
    its file and row."""
    classes, count = len(read_dataset_info(spec.dataset).classes), 0
    for file in split_files(spec.dataset, "train"):
        table = pq.read_table(file, columns=["id", "label"])
        for row_id, label in zip(table.column("id").to_pylist(), table.column("label").to_pylist()):
            problem = label_problem(label, classes)
            if problem:
                raise DataError(f"{file}: row {row_id!r}: {problem} (ingest with on_bad_rows: skip to list such rows)")
            count += spec.keeps(row_id, label)
    return count


@functools.lru_cache(maxsize=2)
def _old_vectors(path: str) -> tuple[dict[str, int], np.ndarray]:
    """The old model's train-split embeddings, read once per process that decodes."""
    embeddings = read_embeddings(path)
    return {row_id: row for row, row_id in enumerate(embeddings.ids.tolist())}, embeddings.vectors


def decode_training_file(files: dict[str, np.ndarray], spec: StreamSpec) -> Iterator[dict[str, np.ndarray]]:
    """A Ray Data task: the kept rows of each file ``files["path"]`` names, decoded at the model's
    input (augmented on a draw made from the row's ``files["draw"]`` and its position), with
    their labels in the model's label map and, when the spec names them, their old features."""
    to_model_label = {label: index for index, label in enumerate(spec.labels_kept)}
    transform = train_transform(spec.preprocessing, spec.augment) if spec.augment is not None else None
    for path, draw in zip(files["path"], files["draw"]):
        table = pq.read_table(path, columns=["id", "image", "label"])
        ids, labels = table.column("id").to_pylist(), table.column("label").to_pylist()
        base = int(draw * 2**31)
        kept = [row for row, (row_id, label) in enumerate(zip(ids, labels)) if spec.keeps(row_id, label)]
        kept = [kept[i] for i in np.random.default_rng(base).permutation(len(kept))]  # a file's rows, in any order
        for start in range(0, len(kept), ROWS_PER_BATCH):
            rows = kept[start : start + ROWS_PER_BATCH]
            images = table.column("image").take(pa.array(rows)).to_pylist()
            pixels = np.empty((len(rows), *spec.preprocessing.shape), dtype=np.uint8)
            for index, (row, data) in enumerate(zip(rows, images)):
                try:
                    image = open_image(data)
                except DataError as error:
                    raise DataError(f"{path}: row {ids[row]!r}: {error}") from None
                pixels[index] = (train_pixels(image, spec.preprocessing, transform, base + row) if transform
                                 else eval_pixels(image, spec.preprocessing))
            batch = {"id": np.array([ids[row] for row in rows], dtype=object), "pixels": pixels,
                     "label": np.array([to_model_label[labels[row]] for row in rows], dtype=np.int64)}
            if spec.old_features:
                position, vectors = _old_vectors(spec.old_features)
                missing = [ids[row] for row in rows if ids[row] not in position]
                if missing:
                    raise DataError(f"{spec.old_features}: no old features for {len(missing)} training rows of {path}, "
                                    f"first {missing[:5]}")
                batch["old_features"] = vectors[[position[ids[row]] for row in rows]]
            yield batch


def training_stream(spec: StreamSpec) -> ray.data.Dataset:
    """The stream of the training rows of ``spec``: the files in a seeded order that changes each
    pass, each decoded by a task of the decoding pool (``decoding_pool``)."""
    files = split_files(spec.dataset, "train")
    # The draw and the decoding share their resources and pool, so that Ray Data fuses them into one task.
    compute, task_cpus = decoding_pool(spec.decode_cpus)
    items = ray.data.from_items([{"path": file} for file in files], override_num_blocks=len(files))
    items = items.randomize_block_order(seed=ray.data.RandomSeedConfig(seed=spec.seed, reseed_after_execution=True))
    items = items.with_column("draw", random(seed=spec.seed, reseed_after_execution=True), compute=compute,
                              num_cpus=task_cpus)
    return items.map_batches(decode_training_file, fn_kwargs={"spec": spec}, batch_size=1, batch_format="numpy",
                             compute=compute, num_cpus=task_cpus)


def decoding_pool(decode_cpus: float) -> tuple[ray.data.TaskPoolStrategy, float]:
    """The decoding tasks' pool and each task's CPUs: one task per CPU the fit reserves for them
    (a fraction of one: one task of it), so that they never take CPUs another fit counted on;
    reserving none, ``SHARED_DECODE_TASKS`` tasks on the workers' CPUs."""
    if decode_cpus == 0:
        return ray.data.TaskPoolStrategy(size=SHARED_DECODE_TASKS), 0.0
    return ray.data.TaskPoolStrategy(size=max(1, int(decode_cpus))), min(1.0, decode_cpus)


class _Collate(NumpyBatchCollateFn):
    """A numpy batch as CPU tensors, its ids kept as they are (names of rows in messages); the
    worker moves the uint8 pixels to its device before scaling them (a quarter of float32's bytes)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor | np.ndarray]:
        return {key: value if value.dtype == object else torch.from_numpy(value) for key, value in batch.items()}


def shard_batches(shard: ray.data.DataIterator, batch_size: int,
                  seed: int) -> Callable[[int, int], Iterator[dict[str, torch.Tensor | np.ndarray]]]:
    """A worker's batches of one epoch: ``passes`` passes over its shard, each shuffled in a
    buffer seeded by the epoch and the pass."""

    def batches(epoch: int, passes: int) -> Iterator[dict[str, torch.Tensor | np.ndarray]]:
        for number in range(passes):
            yield from shard.iter_torch_batches(batch_size=batch_size, drop_last=True, collate_fn=_Collate(),
                                                local_shuffle_buffer_size=SHUFFLE_BATCHES * batch_size,
                                                local_shuffle_seed=seed * 1000 + epoch * passes + number,
                                                prefetch_batches=2)

    return batches
