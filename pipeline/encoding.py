"""Batch encoding of a dataset split with one model, on Ray Data.

The images stream from the dataset's Parquet files through an actor pool whose actors each
hold the model once (``BatchEncoder``); the driver only receives the embeddings and writes
them as numbered part files, so no process ever holds the whole dataset's images.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import ray
import torch

from pipeline.artifacts import load_model
from pipeline.data import decode_images, read_dataset_info, split_files
from pipeline.embeddings import embeddings_table, write_embeddings

log = logging.getLogger(__name__)
COMPLETE_MARKER = "_COMPLETE.json"  # written last: what was encoded, by which model


def completed_encoding(out_dir: str | Path) -> dict | None:
    """The marker of a finished ``encode_split`` in ``out_dir``, or None (absent or interrupted)."""
    marker = Path(out_dir) / COMPLETE_MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


class BatchEncoder:
    """Ray Data callable class: encoded images in, unnormalised embeddings out."""

    def __init__(self, model_dir: str, mode: str, image_size: int, threads: int = 1) -> None:
        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, _ = load_model(model_dir)
        self.model.to(self.device)
        self.mode, self.image_size = mode, image_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = batch["id"].tolist()
        pixels = decode_images(batch["image"].tolist(), self.mode, self.image_size, ids)
        with torch.inference_mode():
            vectors = self.model.embedder(torch.from_numpy(pixels).to(self.device)).float().cpu().numpy()
        return {"id": batch["id"], "label": batch["label"], "embedding": vectors}


def encode_split(model_dir: str | Path, dataset_root: str | Path, split: str, out_dir: str | Path, *,
                 batch_size: int = 512, num_actors: int = 1, cpus_per_actor: float = 1, threads_per_actor: int = 2,
                 use_gpu: bool | None = None, rows_per_file: int = 10_000) -> Path:
    """Encode ``split`` of the dataset with the model at ``model_dir`` into ``out_dir``.

    ``threads_per_actor`` may exceed ``cpus_per_actor``: an actor that reserved every CPU
    would leave none for Ray Data's read tasks, while the reads themselves need little.
    """
    _, card = load_model(model_dir)  # fail fast, on the driver, on a bad artifact
    info = read_dataset_info(dataset_root)
    if card["classes"] and not set(card["classes"]) <= set(info.classes):
        raise ValueError(f"{model_dir}: model classes {sorted(set(card['classes']) - set(info.classes))} "
                         f"are not in the dataset {dataset_root}")
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("*.parquet"), out_dir / COMPLETE_MARKER]:
        stale.unlink(missing_ok=True)
    # Rows keep the dataset's order, so that encoding the same data twice writes the same files.
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    dataset = ray.data.read_parquet(split_files(dataset_root, split), columns=["id", "image", "label"])
    embedded = dataset.map_batches(
        BatchEncoder,
        fn_constructor_kwargs={"model_dir": str(Path(model_dir).resolve()), "mode": info.mode,
                               "image_size": info.image_size, "threads": threads_per_actor},
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=cpus_per_actor,
        num_gpus=1 if use_gpu else 0,
    )
    start, written, part = time.perf_counter(), 0, 0
    for batch in embedded.iter_batches(batch_size=rows_per_file, batch_format="numpy"):
        table = embeddings_table(batch["id"].tolist(), batch["label"], batch["embedding"], card["id"],
                                 card["name"], info.classes)
        write_embeddings(out_dir / f"part-{part:05d}.parquet", table)
        written, part = written + len(table), part + 1
        log.info("encode %s/%s: %d rows (%.0f rows/s)", card["name"], split, written,
                 written / (time.perf_counter() - start))
    (out_dir / COMPLETE_MARKER).write_text(json.dumps(
        {"model_id": card["id"], "dataset": str(Path(dataset_root).resolve()), "split": split, "rows": written}))
    log.info("encode: wrote %d embeddings of %s to %s", written, card["name"], out_dir)
    return out_dir
