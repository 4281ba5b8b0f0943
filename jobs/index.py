"""A gallery index that records which model wrote each vector, for operating an upgrade:
build it from the gallery as served, order the backfill, add re-encoded vectors share by share,
search it. Adding another model's vectors or searching with another model's queries is refused
unless a compatibility report (--report) says the pair is compatible, or --override gives a
reason (logged and kept in the index's history).

    python -m jobs.index build  --embeddings <old gallery set> --out <index> [--kind ivf-flat]
    python -m jobs.index order  --gallery <old gallery set> --parent-train <old train set>
                                --new-train <new train set> --out <order.csv>
    python -m jobs.index add    --index <index> --embeddings <new gallery set> [--order <order.csv> --share 0.3]
                                --report <report folder>
    python -m jobs.index search --index <index> --queries <new query set> --k 10 --out <results.parquet>
                                --report <report folder>
"""

from __future__ import annotations

import argparse

from jobs import cli
from pipeline.config import SERVING_KINDS, MixedIndexConfig


def _guard_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report", action="append", default=[],
                        help="a compatibility report folder (or its report.parquet) of jobs.score or jobs.lineage; "
                             "repeat for several")
    parser.add_argument("--override", default=None,
                        help="do it although no report allows the pair; the reason is logged and kept in the index")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="an index trained on and holding one embeddings set")
    build.add_argument("--embeddings", required=True, help="the gallery's embeddings set as served today")
    build.add_argument("--out", required=True, help="the index folder (must not hold an index)")
    indexes = MixedIndexConfig()
    build.add_argument("--kind", default="ivf-flat", choices=SERVING_KINDS,
                       help="the faiss index (%(choices)s: those whose vectors a backfill can replace; default: "
                            "%(default)s)")
    build.add_argument("--nlist", type=int, default=indexes.nlist,
                       help=MixedIndexConfig.model_fields["nlist"].description)
    build.add_argument("--nprobe", type=int, default=indexes.nprobe, help="IVF lists probed per query")
    build.add_argument("--pq-bytes", type=int, default=indexes.pq_bytes,
                       help=MixedIndexConfig.model_fields["pq_bytes"].description)
    order = commands.add_parser("order", help="the backfill order predicted from the old vectors alone")
    order.add_argument("--gallery", required=True, help="the old model's gallery set (the index's items)")
    order.add_argument("--parent-train", required=True, help="the old model's training split set")
    order.add_argument("--new-train", required=True, help="the new model's set of the same training images")
    order.add_argument("--out", required=True, help="CSV: id, rank, predicted_benefit")
    add = commands.add_parser("add", help="re-encoded (or new) vectors into the index")
    add.add_argument("--index", required=True)
    add.add_argument("--embeddings", required=True, help="the set whose vectors go in")
    add.add_argument("--order", default=None, help="an order CSV (jobs.index order): with --share, the ids to add")
    add.add_argument("--share", type=float, default=1.0,
                     help="with --order: after this step the first share of the order holds the set's vectors")
    _guard_args(add)
    search = commands.add_parser("search", help="the k nearest items of each query")
    search.add_argument("--index", required=True)
    search.add_argument("--queries", required=True, help="the query embeddings set")
    search.add_argument("--k", type=int, default=10)
    search.add_argument("--out", required=True, help="Parquet: query_id, rank, id, score, model_id")
    _guard_args(search)
    args = parser.parse_args()
    {"build": _build, "order": _order, "add": _add, "search": _search}[args.command](args)


def _build(args: argparse.Namespace) -> None:
    from pipeline.config import validate
    from pipeline.data.embeddings import read_embeddings
    from pipeline.index.store import create_index

    config = validate(MixedIndexConfig, {"nlist": args.nlist, "nprobe": args.nprobe, "pq_bytes": args.pq_bytes},
                      cli.COMMAND_LINE)
    built = create_index(read_embeddings(args.embeddings), args.out, args.kind, config)
    print(f"index: {built.folder} ({built.meta['factory']}, {len(built.items)} vectors of {built.held[0]})")


def _order(args: argparse.Namespace) -> None:
    from pipeline.atomic import write_text_atomic
    from pipeline.data.embeddings import read_embeddings
    from pipeline.lineage.backfill import predicted_order_table

    gallery, parent, new = (read_embeddings(path) for path in (args.gallery, args.parent_train, args.new_train))
    ranked = predicted_order_table(gallery, parent, new)
    write_text_atomic(args.out, ranked.to_csv(index=False))
    print(f"order: {args.out} ({len(ranked)} items, {new.model_name}'s benefit predicted from {gallery.model_name}'s "
          "vectors)")


def _reports(paths: list[str]) -> list:
    from pipeline.index.guard import read_report

    return [read_report(path) for path in paths]


def _add(args: argparse.Namespace) -> None:
    from pipeline.data.embeddings import read_embeddings
    from pipeline.index.store import add_vectors, ids_to_add, open_index, read_order

    gallery, embeddings = open_index(args.index), read_embeddings(args.embeddings)
    ids = ids_to_add(gallery, embeddings, read_order(args.order) if args.order else None, args.share)
    record = add_vectors(gallery, embeddings, ids, _reports(args.report), args.override)
    counts = gallery.items.model_id.map(gallery.meta["models"]).value_counts()
    print(f"index: {args.index}: {record['replaced']} vectors replaced, {record['appended']} appended; it holds "
          + ", ".join(f"{count} of {name}" for name, count in counts.items()))


def _search(args: argparse.Namespace) -> None:
    import pyarrow as pa

    from pipeline.atomic import write_table_atomic
    from pipeline.data.embeddings import read_embeddings
    from pipeline.index.store import open_index, search_index

    found = search_index(open_index(args.index), read_embeddings(args.queries), args.k, _reports(args.report),
                         args.override)
    write_table_atomic(pa.Table.from_pandas(found, preserve_index=False), args.out)
    print(f"search: {args.out} ({found.query_id.nunique()} queries, k = {args.k})")


if __name__ == "__main__":
    cli.run_main(main)
