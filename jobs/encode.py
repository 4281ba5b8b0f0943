"""Encode a dataset split with one model on Ray Data (actor pool) into embeddings Parquet.

Run again on the same --out, it encodes only the input files not done yet (a killed job resumes)."""

from __future__ import annotations

from jobs import cli


def main() -> None:
    parser = cli.job_parser("encode", __doc__, "dataset", model="model artifact folder",
                            out="embeddings folder to write")
    parser.add_argument("--split", default="test", choices=["train", "test"])
    cli.add_encode_args(parser)
    cli.add_ray_arg(parser)
    args = parser.parse_args()
    from pipeline.encode.split import encode_split
    from pipeline.runtime import init_ray

    options = cli.encode_options(args)
    init_ray(args.ray_address)
    print(f"embeddings: {encode_split(args.model, args.dataset, args.split, args.out, options)}")


if __name__ == "__main__":
    cli.run_main(main)
