"""Benchmark: batch encoding on Ray Data (``pipeline.encoding.encode_split``, what ``jobs.encode``
runs) against a plain ``torch`` inference loop over the same Parquet files, in the same run.

A gallery of 100,000 Fashion-MNIST images (the 70,000 of both splits, then the first 30,000 again
under new ids; PNG bytes as ingested, 10 files of 10,000 rows), the demo's model (small CNN,
128-d; initial weights: the arithmetic is the same), batch 512. Both sides read the Parquet
files, decode the PNGs with ``pipeline.data.decode_image``, run the embedder and write the
embeddings Parquet. The plain loop runs with 2 torch threads, before and after the Ray runs (its
figure is the mean); Ray Data with 1 actor of 2 threads, then 2 actors of 1 thread (how it
scales with actors on this machine's cores; a pool's actors reserve one CPU between them, which
leaves the other to Ray Data's reads). Ray Data also encodes the first file alone (10,000
images): the two sizes split its time into a fixed start-up cost (actor pool, model loading,
file listing) and a rate per image. Starting Ray itself, once per job, is reported apart. The
arithmetic floor is the embedder's FLOPs per image over the measured GEMM rate. Results:
``bench/results/ray_data.json`` and its section of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import gemm_rate, save_results, write_section
from pipeline.artifacts import load_model, write_artifact
from pipeline.config import DataConfig, ModelConfig
from pipeline.data import DATASET_SCHEMA, decode_image, read_dataset_info, split_files
from pipeline.embeddings import embeddings_table, write_embeddings
from pipeline.models import EmbeddingModel
from pipeline.orchestrate import ensure_dataset

TARGET = 0.9  # issue 7: images/s of the Ray Data encoding against the plain loop, at 1e5 images
GALLERY, ROWS_PER_FILE, BATCH = 100_000, 10_000, 512
MODEL = ModelConfig(architecture="small_cnn", embedding_dim=128)


def make_gallery(source: Path, out: Path, files: int = GALLERY // ROWS_PER_FILE) -> Path:
    """The first ``files`` files of ``GALLERY`` rows of ``source``'s images, as a dataset whose
    test split holds them all."""
    if (out / "dataset.json").is_file():
        return out
    table = pa.concat_tables([pq.read_table(split_files(source, split), schema=DATASET_SCHEMA)
                              for split in ("train", "test")])
    extra = table.slice(0, GALLERY - len(table))
    extra = extra.set_column(0, "id", pa.array([f"again-{i}" for i in extra.column("id").to_pylist()]))
    gallery = pa.concat_tables([table, extra])
    (out / "test").mkdir(parents=True, exist_ok=True)
    for part in range(files):
        pq.write_table(gallery.slice(part * ROWS_PER_FILE, ROWS_PER_FILE), out / "test" / f"part-{part:05d}.parquet")
    shutil.copy(source / "classes.json", out / "classes.json")
    meta = json.loads((source / "dataset.json").read_text())
    (out / "dataset.json").write_text(json.dumps({**meta, "rows": {"test": files * ROWS_PER_FILE},
                                                  "source": str(source)}))
    return out


def make_model(folder: Path, dataset: Path) -> Path:
    info = read_dataset_info(dataset)
    torch.manual_seed(0)
    card = {"id": "bench-encode", "name": "bench", "model": MODEL.model_dump(), "classes": info.classes,
            "channels": info.channels, "mode": info.mode, "image_size": info.image_size, "method": "independent"}
    return write_artifact(folder, EmbeddingModel(MODEL, info.channels, len(info.classes)).state_dict(), card)


def plain_loop(model_dir: Path, dataset: Path, out: Path, threads: int = 2) -> float:
    """Seconds to encode the gallery file by file in one process, writing the same Parquet."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    model, card = load_model(model_dir)
    info = read_dataset_info(dataset)
    for index, file in enumerate(split_files(dataset, "test")):
        table = pq.read_table(file, columns=["id", "image", "label"])
        ids, images = table.column("id").to_pylist(), table.column("image").to_pylist()
        vectors = []
        with torch.inference_mode():
            for start in range(0, len(images), BATCH):
                pixels = np.stack([decode_image(data, info.mode, info.image_size) for data in images[start : start + BATCH]])
                vectors.append(model.embedder(torch.from_numpy(pixels)).numpy())
        write_embeddings(out / f"part-{index:05d}.parquet", embeddings_table(
            ids, table.column("label").to_numpy(), np.concatenate(vectors), card["id"], card["name"], info.classes))
    return time.perf_counter() - started


def ray_data(model_dir: Path, dataset: Path, out: Path, actors: int, threads: int) -> float:
    """Seconds of ``encode_split`` on the running Ray (actor pool start and model loading included)."""
    from pipeline.encoding import encode_split

    started = time.perf_counter()
    encode_split(model_dir, dataset, "test", out, batch_size=BATCH, num_actors=actors, cpus_per_actor=1 / actors,
                 threads_per_actor=threads)
    return time.perf_counter() - started


def flops_per_image(model_dir: Path, dataset: Path) -> float:
    model, _ = load_model(model_dir)
    info = read_dataset_info(dataset)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.embedder(torch.randn(BATCH, info.channels, info.image_size, info.image_size))
    return counter.get_total_flops() / BATCH


def run(source: Path, work: Path) -> dict:
    import ray

    from pipeline.runtime import init_ray

    dataset, small = make_gallery(source, work / "gallery-1e5"), make_gallery(source, work / "gallery-1e4", files=1)
    with tempfile.TemporaryDirectory(prefix="bench-ray-data-") as scratch:
        scratch = Path(scratch)
        model = make_model(scratch / "model", dataset)
        plain = [plain_loop(model, dataset, scratch / "plain-before")]
        print(f"plain loop: {GALLERY / plain[0]:.0f} images/s", flush=True)
        started = time.perf_counter()
        init_ray()
        ray_start = time.perf_counter() - started
        cases = []
        for actors, threads in ((1, 2), (2, 1)):
            seconds = ray_data(model, dataset, scratch / f"ray-{actors}", actors, threads)
            small_seconds = ray_data(model, small, scratch / f"ray-small-{actors}", actors, threads)
            per_image = (seconds - small_seconds) / (GALLERY - ROWS_PER_FILE)
            cases.append({"actors": actors, "threads_per_actor": threads, "seconds": seconds,
                          "images_per_s": GALLERY / seconds, "small_seconds": small_seconds,
                          "marginal_images_per_s": 1 / per_image, "fixed_seconds": seconds - GALLERY * per_image})
            print(f"Ray Data, {actors} actor(s) x {threads} thread(s): {GALLERY / seconds:.0f} images/s; "
                  f"{1 / per_image:.0f} images/s beyond a fixed {cases[-1]['fixed_seconds']:.1f} s", flush=True)
        ray.shutdown()
        plain.append(plain_loop(model, dataset, scratch / "plain-after"))
        print(f"plain loop: {GALLERY / plain[1]:.0f} images/s", flush=True)
        same = all(pq.read_table(scratch / "plain-before" / f.name).column("embedding").equals(
            pq.read_table(f).column("embedding")) for f in sorted((scratch / "ray-1").glob("*.parquet")))
        rate = gemm_rate(1024)
        floor = rate / flops_per_image(model, dataset)
    plain_rate = GALLERY / np.mean(plain)
    for case in cases:
        case["ratio"] = case["images_per_s"] / plain_rate
        case["marginal_ratio"] = case["marginal_images_per_s"] / plain_rate
        # the gallery from which the whole job reaches the target: n / (fixed + n / marginal) = TARGET * plain
        gap = 1 / (TARGET * plain_rate) - 1 / case["marginal_images_per_s"]
        case["target_from_images"] = case["fixed_seconds"] / gap if gap > 0 else None
    return {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores", "gallery": GALLERY,
            "batch": BATCH, "plain": {"seconds": plain, "images_per_s": plain_rate}, "ray_data": cases,
            "ray_start_seconds": ray_start, "same_embeddings": same, "gemm_gflops": rate / 1e9,
            "floor_images_per_s": floor}


def write_markdown(results: dict) -> None:
    plain = results["plain"]
    rows = ["## Ray Data encoding (bench/ray_data.py)", "",
            f"{results['machine']}; {results['gallery']:,} Fashion-MNIST images as Parquet (10 files), small CNN "
            f"128-d, batch {results['batch']}; read, decode, embed, write Parquet; measured {results['date']} "
            f"(`make bench`). Floor = {results['gemm_gflops']:.0f} GFLOP/s (torch.mm) / the embedder's FLOPs per "
            f"image (decoding not counted). Starting Ray, once per job: {results['ray_start_seconds']:.1f} s, not "
            f"included. Same embeddings bit for bit as the plain loop: {results['same_embeddings']}.", "",
            f"| | images/s at 1e5 | against the plain loop (target >= {TARGET}) | fixed cost (s) | images/s beyond it "
            "| that against the plain loop | gallery from which the target holds | floor (images/s) | measured / floor |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| plain loop, 2 threads (mean of before / after: {results['gallery'] / plain['seconds'][0]:.0f} / "
            f"{results['gallery'] / plain['seconds'][1]:.0f}) | {plain['images_per_s']:.0f} | 1 | | | | | "
            f"{results['floor_images_per_s']:.0f} | {plain['images_per_s'] / results['floor_images_per_s']:.2f} |"]
    for case in results["ray_data"]:
        mark = " ok" if case["ratio"] >= TARGET else " **under**"
        reach = f"{case['target_from_images']:,.0f} images" if case["target_from_images"] else "never"
        rows.append(f"| `encode_split`, {case['actors']} actor(s) x {case['threads_per_actor']} thread(s) | "
                    f"{case['images_per_s']:.0f} | **{case['ratio']:.3f}**{mark} | {case['fixed_seconds']:.1f} | "
                    f"{case['marginal_images_per_s']:.0f} | {case['marginal_ratio']:.3f} | {reach} | "
                    f"{results['floor_images_per_s']:.0f} | {case['images_per_s'] / results['floor_images_per_s']:.2f} |")
    write_section("ray_data", rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ray_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=None,
                        help="ingested Fashion-MNIST (default: ingested to data/fashion-mnist if missing)")
    parser.add_argument("--work", type=Path, default=Path("outputs/bench"), help="where the 1e5 gallery is kept")
    args = parser.parse_args()
    results = run((args.dataset or ensure_dataset(DataConfig(), seed=0)).resolve(), args.work.resolve())
    save_results("ray_data", results)
    write_markdown(results)


if __name__ == "__main__":
    main()
