"""Benchmark: batch encoding on Ray Data (``pipeline.encode.split.encode_split``, what ``jobs.encode``
runs) against a plain ``torch`` inference loop over the same Parquet files, in the same run.

A gallery of 100,000 Fashion-MNIST images (the 70,000 of both splits, then the first 30,000 again
under new ids; PNG bytes as ingested, 10 files of 10,000 rows), the demo's model (small CNN,
128-d; initial weights: the arithmetic is the same), batch 512. Both sides read the Parquet
files, decode the PNGs (``pipeline.data.decode``), run the embedder and write the embeddings Parquet.
The plain loop runs with 2 torch threads, before and after the Ray runs (its figure is the
mean). Ray Data runs three layouts: 1 actor of 2 threads (the job's default), 2 actors of 1
thread (how it scales with actors on this machine's cores), and 1 actor reserving 1 CPU, which
decodes its files itself (what the default avoids). Each layout runs in two rounds
on a freshly started Ray: the first encoding, as a ``jobs.encode`` job meets it (every worker
process starts and imports its libraries), then two more in the same job (worker processes for
decoding reused; actors always start anew), as the pipeline encodes one model after another.
Those two encode the gallery and its first file alone (10,000 images), which splits their time
into a fixed start-up cost and a rate per image. Starting Ray itself is reported apart. The
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
from pipeline.config import DataConfig, EncodeConfig, ModelConfig
from pipeline.data.dataset import DATASET_SCHEMA, read_dataset_info, split_files
from pipeline.data.decode import decode_images
from pipeline.data.embeddings import embeddings_table, write_embeddings
from pipeline.data.importers import ensure_dataset
from pipeline.model.artifacts import load_model, write_initial_model

TARGET = 0.9  # images/s of the Ray Data encoding against the plain loop, at 1e5 images
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
    return write_initial_model(folder, "bench", MODEL, info.classes, channels=info.channels, mode=info.mode,
                               image_size=info.image_size, model_id="bench-encode")


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
                pixels = decode_images(images[start : start + BATCH], card.preprocessing, ids[start : start + BATCH])
                vectors.append(model.embedder(torch.from_numpy(pixels)).numpy())
        write_embeddings(out / f"part-{index:05d}.parquet", embeddings_table(
            ids, table.column("label").to_numpy(), np.concatenate(vectors), card.id, card.name, info.classes))
    return time.perf_counter() - started


def ray_data(model_dir: Path, dataset: Path, out: Path, layout: dict) -> float:
    """Seconds of ``encode_split`` on the running Ray (actor pool start and model loading included)."""
    from pipeline.encode.split import encode_split

    started = time.perf_counter()
    encode_split(model_dir, dataset, "test", out, EncodeConfig(
        batch_size=BATCH, num_actors=layout["actors"], cpus_per_actor=layout["cpus_per_actor"],
        threads_per_actor=layout["threads_per_actor"]))
    return time.perf_counter() - started


def flops_per_image(model_dir: Path, dataset: Path) -> float:
    model, _ = load_model(model_dir)
    info = read_dataset_info(dataset)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.embedder(torch.randn(BATCH, info.channels, info.image_size, info.image_size))
    return counter.get_total_flops() / BATCH


LAYOUTS = [{"actors": 1, "threads_per_actor": 2, "cpus_per_actor": 0.5, "decoding": "tasks"},
           {"actors": 2, "threads_per_actor": 1, "cpus_per_actor": 0.5, "decoding": "tasks"},
           {"actors": 1, "threads_per_actor": 2, "cpus_per_actor": 1.0, "decoding": "in the actor"}]
ROUNDS = 2


def run(source: Path, work: Path) -> dict:
    import ray

    from pipeline.runtime import init_ray

    dataset, small = make_gallery(source, work / "gallery-1e5"), make_gallery(source, work / "gallery-1e4", files=1)
    with tempfile.TemporaryDirectory(prefix="bench-ray-data-") as scratch:
        scratch = Path(scratch)
        model = make_model(scratch / "model", dataset)
        plain: list[float] = []
        timings = [{"first": [], "later": [], "later_small": [], "ray_start": []} for _ in LAYOUTS]
        for round_ in range(ROUNDS):
            plain.append(plain_loop(model, dataset, scratch / f"plain-{round_}"))
            print(f"plain loop: {GALLERY / plain[-1]:.0f} images/s", flush=True)
            for index, layout in enumerate(LAYOUTS):
                times, out = timings[index], scratch / f"ray-{round_}-{index}"
                started = time.perf_counter()
                init_ray()
                times["ray_start"].append(time.perf_counter() - started)
                times["first"].append(ray_data(model, dataset, out / "first", layout))
                times["later"].append(ray_data(model, dataset, out / "later", layout))
                times["later_small"].append(ray_data(model, small, out / "small", layout))
                ray.shutdown()
                print(f"Ray Data, {layout}: first {times['first'][-1]:.1f} s, later {times['later'][-1]:.1f} s, "
                      f"1e4 {times['later_small'][-1]:.1f} s", flush=True)
        plain.append(plain_loop(model, dataset, scratch / "plain-last"))
        print(f"plain loop: {GALLERY / plain[-1]:.0f} images/s", flush=True)
        same = all(pq.read_table(scratch / "plain-0" / f.name).column("embedding").equals(
            pq.read_table(f).column("embedding")) for f in sorted((scratch / "ray-0-0" / "first").glob("*.parquet")))
        rate = gemm_rate(1024)
        floor = rate / flops_per_image(model, dataset)
    plain_rate = GALLERY / np.mean(plain)
    cases = []
    for layout, times in zip(LAYOUTS, timings):
        first, later, small_seconds = (float(np.mean(times[key])) for key in ("first", "later", "later_small"))
        per_image = (later - small_seconds) / (GALLERY - ROWS_PER_FILE)
        fixed = {"first": first - GALLERY * per_image, "later": later - GALLERY * per_image}
        # the gallery from which the first encoding reaches the target: n / (fixed + n per_image) = TARGET * plain
        gap = 1 / (TARGET * plain_rate) - per_image
        cases.append({**layout, **times, "first_images_per_s": GALLERY / first,
                      "first_ratio": GALLERY / first / plain_rate,
                      "later_images_per_s": GALLERY / later, "later_ratio": GALLERY / later / plain_rate,
                      "fixed_seconds": fixed, "marginal_images_per_s": 1 / per_image,
                      "marginal_ratio": 1 / per_image / plain_rate,
                      "first_reaches_target_from": fixed["first"] / gap if gap > 0 else None})
    return {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores", "gallery": GALLERY,
            "batch": BATCH, "rounds": ROUNDS, "plain": {"seconds": plain, "images_per_s": plain_rate},
            "ray_data": cases, "ray_start_seconds": float(np.mean([t for c in timings for t in c["ray_start"]])),
            "same_embeddings": same, "gemm_gflops": rate / 1e9, "floor_images_per_s": floor}


def write_markdown(results: dict) -> None:
    plain, floor = results["plain"], results["floor_images_per_s"]
    plain_runs = " / ".join(f"{results['gallery'] / seconds:.0f}" for seconds in plain["seconds"])

    def ratio(value: float) -> str:
        return f"**{value:.3f}**" + (" ok" if value >= TARGET else " **under**")

    rows = ["## Ray Data encoding (bench/ray_data.py)", "",
            f"{results['machine']}; {results['gallery']:,} Fashion-MNIST images as Parquet (10 files), small CNN "
            f"128-d, batch {results['batch']}; read, decode, embed, write Parquet; measured {results['date']} "
            f"(`make bench`), each figure the mean of {results['rounds']} rounds on a freshly started Ray. *First*: "
            "the first encoding in a job, as `jobs.encode` meets it (every worker process starts and imports torch "
            "or Ray Data); *later*: the next ones in the same job, as the pipeline encodes model after model "
            "(decoding workers reused, actors started anew), split into a fixed cost and a rate per image by "
            f"encoding 10,000 images too. Starting Ray, once per job: {results['ray_start_seconds']:.1f} s, not "
            f"included. Floor = {results['gemm_gflops']:.0f} GFLOP/s (torch.mm) / the embedder's FLOPs per image "
            f"(decoding not counted). Same embeddings bit for bit as the plain loop: {results['same_embeddings']}.",
            "",
            f"| | decoding | first: images/s | against the plain loop (target >= {TARGET}) | later: images/s | "
            "against the plain loop | fixed cost, first / later (s) | images/s beyond it | that against the plain "
            "loop | gallery from which the first reaches the target | floor (images/s) | first / floor |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            f"| plain loop, 2 threads (mean of {plain_runs}: before each round, after the last) | in the loop | "
            f"{plain['images_per_s']:.0f} | 1 | | | | | | | {floor:.0f} | {plain['images_per_s'] / floor:.2f} |"]
    for case in results["ray_data"]:
        reach = case["first_reaches_target_from"]
        reach = "never" if reach is None else f"{max(reach, 0):,.0f} images"
        rows.append(f"| `encode_split`, {case['actors']} actor(s) x {case['threads_per_actor']} thread(s), "
                    f"{case['cpus_per_actor']:g} CPU each | {case['decoding']} | {case['first_images_per_s']:.0f} | "
                    f"{ratio(case['first_ratio'])} | {case['later_images_per_s']:.0f} | {ratio(case['later_ratio'])} | "
                    f"{case['fixed_seconds']['first']:.1f} / {case['fixed_seconds']['later']:.1f} | "
                    f"{case['marginal_images_per_s']:.0f} | {case['marginal_ratio']:.3f} | {reach} | "
                    f"{floor:.0f} | {case['first_images_per_s'] / floor:.2f} |")
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
