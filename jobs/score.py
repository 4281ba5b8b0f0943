"""Score every (query model, gallery model) pair of embedding sets with faiss; log the matrix to MLflow.

Transformed entries (a new model through its T21, the old gallery through a T12) join the matrix
when ``--artifacts`` names the model and CMC artifacts that hold the transformations."""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs._common import add_search_args, add_tracking_args, run_main, search_options
from pipeline.data.embeddings import open_embeddings
from pipeline.encode.mapped import matrix_entries
from pipeline.model.card import CmcCard, read_card
from pipeline.score.scoring import score_and_report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.score", description=__doc__)
    parser.add_argument("--embeddings", nargs="+", required=True, help="embeddings folders, one per model")
    parser.add_argument("--old-model", required=True, help="the old model's artifact (defines seen/unseen classes)")
    parser.add_argument("--independent", default=None, help="name of the independent new model (update gain)")
    parser.add_argument("--out", required=True, help="report folder to write")
    parser.add_argument("--artifacts", nargs="*", default=[],
                        help="model or CMC artifact folders whose transformations add matrix entries (mapped sets "
                             "are written under OUT/embeddings)")
    parser.add_argument("--topk", type=int, nargs="+", default=[1, 5], help="k of the top-k accuracies")
    parser.add_argument("--split", default="test", help="the split the embeddings encode (names the mapped sets' folders)")
    add_search_args(parser)
    add_tracking_args(parser)
    args = parser.parse_args()
    sets = {}
    for folder in args.embeddings:
        embeddings = open_embeddings(folder)
        if embeddings.model_name in sets:
            raise ValueError(f"{folder}: a second embeddings set of model {embeddings.model_name!r}")
        sets[embeddings.model_name] = embeddings
    models, cmc = {}, {}
    for folder in args.artifacts:
        card = read_card(folder)
        (cmc if isinstance(card, CmcCard) else models)[card.name] = Path(folder)
    entries = matrix_entries(models, sets, read_card(args.old_model).name, Path(args.out) / "embeddings", args.split, cmc)
    print(score_and_report({name: e.embeddings for name, e in entries.items()}, old_model=args.old_model,
                           independent=args.independent, out_dir=args.out, tracking_uri=args.tracking_uri,
                           experiment=args.experiment, topk=tuple(args.topk), **search_options(args),
                           references={name: e.reference for name, e in entries.items()},
                           transforms={name: e.transform for name, e in entries.items()}))


if __name__ == "__main__":
    run_main(main)
