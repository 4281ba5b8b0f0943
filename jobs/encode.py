"""Encode a dataset split with one model on Ray Data (actor pool) into embeddings Parquet.

Run again on the same --out, it encodes only the input files not done yet (a killed job resumes)."""

from __future__ import annotations

import argparse

from jobs._common import add_bad_rows_arg, run_main
from pipeline.config import EncodeConfig
from pipeline.encode.split import encode_split
from pipeline.runtime import init_ray


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.encode", description=__doc__)
    parser.add_argument("--model", required=True, help="model artifact folder")
    parser.add_argument("--dataset", required=True, help="ingested dataset folder")
    parser.add_argument("--split", default="test", choices=["train", "test"])
    parser.add_argument("--out", required=True, help="embeddings folder to write")
    defaults = EncodeConfig()
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--num-actors", type=int, default=defaults.num_actors)
    parser.add_argument("--cpus-per-actor", type=float, default=defaults.cpus_per_actor,
                        help=EncodeConfig.model_fields["cpus_per_actor"].description)
    parser.add_argument("--threads-per-actor", type=int, default=defaults.threads_per_actor,
                        help=EncodeConfig.model_fields["threads_per_actor"].description)
    parser.add_argument("--use-gpu", action=argparse.BooleanOptionalAction, default=defaults.use_gpu,
                        help=EncodeConfig.model_fields["use_gpu"].description)
    add_bad_rows_arg(parser)
    parser.add_argument("--ray-address", default=None)
    args = parser.parse_args()
    init_ray(args.ray_address)
    out = encode_split(args.model, args.dataset, args.split, args.out, batch_size=args.batch_size,
                       num_actors=args.num_actors, cpus_per_actor=args.cpus_per_actor,
                       threads_per_actor=args.threads_per_actor, use_gpu=args.use_gpu, on_bad_rows=args.on_bad_rows)
    print(f"embeddings: {out}")


if __name__ == "__main__":
    run_main(main)
