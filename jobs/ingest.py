"""Convert an idx .gz folder or an ImageFolder tree into the Parquet dataset (id, image, label)."""

from __future__ import annotations

from jobs import cli


def main() -> None:
    parser = cli.job_parser("ingest", __doc__,
                            out="dataset folder to write")
    parser.add_argument("--source", default="/usr/share/datasets/fashion-mnist", help="idx folder or ImageFolder tree")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="test share for sources without a split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=None,
                        help="resize to this size (default: source size, <= 64)")
    parser.add_argument("--rows-per-file", type=int, default=10_000, help="rows per Parquet part file")
    cli.add_bad_rows_arg(parser)
    args = parser.parse_args()
    from pipeline.data.importers import ingest

    info = ingest(args.source, args.out, args.test_fraction, args.seed, args.image_size, args.rows_per_file,
                  args.on_bad_rows)
    print(f"dataset written to {args.out}: {len(info.classes)} classes, rows {info.rows}, "
          f"{info.mode} {info.image_size}px")


if __name__ == "__main__":
    cli.run_main(main)
