"""Score every (query model, gallery model) pair of embedding sets with faiss; log the matrix to MLflow."""

from __future__ import annotations

import argparse

from jobs._common import add_tracking_args, run_main
from pipeline.embeddings import read_embeddings
from pipeline.scoring import score_and_report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.score", description=__doc__)
    parser.add_argument("--embeddings", nargs="+", required=True, help="embeddings folders, one per model")
    parser.add_argument("--old-model", required=True, help="the old model's artifact (defines seen/unseen classes)")
    parser.add_argument("--independent", default=None, help="name of the independent new model (update gain)")
    parser.add_argument("--out", required=True, help="report folder to write")
    parser.add_argument("--query-chunk", type=int, default=1024)
    add_tracking_args(parser)
    args = parser.parse_args()
    sets = {}
    for folder in args.embeddings:
        embeddings = read_embeddings(folder)
        if embeddings.model_name in sets:
            raise ValueError(f"{folder}: a second embeddings set of model {embeddings.model_name!r}")
        sets[embeddings.model_name] = embeddings
    print(score_and_report(sets, old_model=args.old_model, independent=args.independent, out_dir=args.out,
                           tracking_uri=args.tracking_uri, experiment=args.experiment, chunk=args.query_chunk))


if __name__ == "__main__":
    run_main(main)
