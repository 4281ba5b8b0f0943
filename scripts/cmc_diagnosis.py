"""Fit CMC methods in plain PyTorch on a finished scenario run's stored features, and score both
routes on its test embeddings: why one method's T12 or T21 loses to another's, in seconds per
variant instead of a pipeline run.

    python scripts/cmc_diagnosis.py --run outputs/results/classes --seed 0 \
        --variants '[{"method": "lce_cmc", "compat": {"compactness_margin": 0.7}},
                     {"method": "rbt_cmc"},
                     {"method": "lce_rbt_cmc", "compat": {"compactness_margin": 0.7, "new_space_margin": 0.1}}]'

Reads ``<run>/stats/<cmc>-s<seed>.{features,old_space,new_space}.npz`` (the inputs its CMC fit
trained on; ``--cmc`` names that fit, default cmc_lce) and the test embeddings of the old and the
independent model; trains both transformations with the project's objective
(``pipeline.compat.objectives.cmc_terms``), its optimizer and schedule, for the steps a pipeline
CMC fit of that budget takes. Prints top-1 and mAP (in %) of T21(new)/old and new/T12(old).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.compat.objectives import cmc_terms
from pipeline.compat.statistics import OldSpaceStats
from pipeline.compat.steps import optimizer_and_schedule
from pipeline.config import CompatConfig, TransformConfig
from pipeline.data.embeddings import read_embeddings
from pipeline.model.artifacts import build_cmc_transforms
from pipeline.model.transformations import BACKWARD, FORWARD
from pipeline.score.retrieval import per_query_metrics


def _score(queries: np.ndarray, gallery: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> str:
    metrics = per_query_metrics(queries, labels, gallery, labels, ids, ids, topk=(1,))
    return f"{100 * metrics['top1'].mean():.2f} / {100 * np.nanmean(metrics['ap']):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished scenario run (output_dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cmc", default="cmc_lce", help="the CMC fit whose stored inputs are read")
    parser.add_argument("--variants", required=True, help="JSON list of {method, compat}")
    parser.add_argument("--steps", type=int, default=480, help="optimizer steps (4 epochs of 15k rows at 128)")
    args = parser.parse_args()
    stats = f"{args.run}/stats/{args.cmc}-s{args.seed}"
    with np.load(f"{stats}.features.npz", allow_pickle=False) as data:
        old, new, labels = (torch.from_numpy(data[key]) for key in ("old", "new", "labels"))
    old_space, new_space = OldSpaceStats.load(f"{stats}.old_space.npz"), OldSpaceStats.load(f"{stats}.new_space.npz")
    old_test = read_embeddings(f"{args.run}/embeddings/old/test")
    new_test = read_embeddings(f"{args.run}/embeddings/independent-s{args.seed}/test")
    old_gallery = old_test.vectors_of(new_test.ids)
    print(f"old/old {_score(old_test.vectors, old_test.vectors, old_test.labels, old_test.ids)}")
    for variant in json.loads(args.variants):
        compat = CompatConfig(**variant.get("compat", {}))
        torch.manual_seed(args.seed)
        transforms = build_cmc_transforms(old.shape[1], new.shape[1], TransformConfig(**variant.get("transform", {})))
        optimizer, scheduler = optimizer_and_schedule(transforms.parameters(), 2e-3, 5e-4, args.steps)
        order = torch.Generator().manual_seed(args.seed)
        for _ in range(args.steps):
            batch = torch.randint(0, len(labels), (128,), generator=order)
            terms = cmc_terms(variant["method"], old[batch], new[batch], labels[batch], old_space, new_space, compat,
                              transforms)
            optimizer.zero_grad()
            terms["loss"].backward()
            optimizer.step()
            scheduler.step()
        transforms.eval()
        with torch.no_grad():
            t21 = transforms[BACKWARD](F.normalize(torch.from_numpy(new_test.vectors), dim=1)).numpy()
            t12 = transforms[FORWARD](F.normalize(torch.from_numpy(old_gallery), dim=1)).numpy()
        print(f"{json.dumps(variant)}: T21(new)/old {_score(t21, old_gallery, new_test.labels, new_test.ids)}, "
              f"new/T12(old) {_score(new_test.vectors, t12, new_test.labels, new_test.ids)}", flush=True)


if __name__ == "__main__":
    main()
