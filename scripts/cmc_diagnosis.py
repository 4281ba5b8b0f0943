"""Fit CMC methods in plain PyTorch on a finished scenario run's stored features, and score both
routes on its test embeddings: why one method's T12 or T21 loses to another's, in a minute per
variant and seed instead of a pipeline run.

    python scripts/cmc_diagnosis.py --run outputs/results/classes --seeds 0,1 \
        --variants '[{"method": "rbt_cmc"},
                     {"method": "lce_rbt_cmc", "compat": {"compactness_margin": 0.7, "new_space_margin": 0.5,
                                                          "lambda_regression": 3.0}}]'

Reads ``<run>/stats/<cmc>-s<seed>.{features,old_space,new_space}.npz`` (the inputs its CMC fits
trained on: every CMC fit of one seed reads the same; ``--cmc`` names one, default cmc_rbt) and the
test embeddings of the old and the independent model; trains both transformations with the
project's objective (``pipeline.compat.objectives.cmc_terms``), optimizer and schedule at a
pipeline CMC fit's budget (``CmcConfig``'s epochs and batch size, a shuffled pass an epoch).
Prints top-1 / mAP (in %) of old/old, T21(new)/old and new/T12(old), overall and, where the old
model knew fewer classes, on the seen and unseen ones.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.compat.losses import RetrievalMemory, memory_rows
from pipeline.compat.methods import Kind, method_named
from pipeline.compat.objectives import cmc_terms
from pipeline.compat.statistics import OldSpaceStats
from pipeline.compat.steps import optimizer_and_schedule
from pipeline.config import CmcConfig, CompatConfig, TransformConfig
from pipeline.data.embeddings import read_embeddings
from pipeline.model.artifacts import build_cmc_transforms
from pipeline.model.transformations import BACKWARD, FORWARD
from pipeline.score import per_query_metrics
from pipeline.train.loop import passes_per_epoch


def _score(queries: np.ndarray, gallery: np.ndarray, labels: np.ndarray, ids: np.ndarray, seen: np.ndarray) -> str:
    metrics = per_query_metrics(queries, labels, gallery, labels, ids, ids, topk=(1,))
    subsets = {"all": np.ones_like(seen)} if seen.all() else {"all": np.ones_like(seen), "seen": seen, "unseen": ~seen}
    return ", ".join(f"{name} {100 * metrics['top1'][mask].mean():.2f} / {100 * np.nanmean(metrics['ap'][mask]):.2f}"
                     for name, mask in subsets.items())


def _fit(variant: dict, old: torch.Tensor, new: torch.Tensor, labels: torch.Tensor, old_space: OldSpaceStats,
         new_space: OldSpaceStats, seed: int, budget: CmcConfig) -> torch.nn.ModuleDict:
    compat = CompatConfig(**variant.get("compat", {}))
    torch.manual_seed(seed)
    transforms = build_cmc_transforms(old.shape[1], new.shape[1], TransformConfig(**variant.get("transform", {})))
    # whole batches, as a pipeline fit counts them
    passes = passes_per_epoch(budget, max(1, len(labels) // budget.batch_size))
    steps = budget.epochs * passes * -(-len(labels) // budget.batch_size)
    optimizer, scheduler = optimizer_and_schedule(transforms.parameters(), budget.lr, budget.weight_decay, steps)
    order = torch.Generator().manual_seed(seed)
    searches = method_named(variant["method"], Kind.CMC).searches_rows
    for _ in range(budget.epochs * passes):
        for batch in torch.randperm(len(labels), generator=order).split(budget.batch_size):
            memory = None
            if searches:
                chosen, own = memory_rows(len(labels), batch, compat.retrieval.memory, order)
                memory = RetrievalMemory(old[chosen], new[chosen], labels[chosen], own)
            terms = cmc_terms(variant["method"], old[batch], new[batch], labels[batch], old_space, new_space, compat,
                              transforms, memory)
            optimizer.zero_grad()
            terms["loss"].backward()
            optimizer.step()
            scheduler.step()
    return transforms.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished scenario run (output_dir)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--cmc", default="cmc_rbt", help="the CMC fit whose stored inputs are read")
    parser.add_argument("--variants", required=True, help="JSON list of {method, compat, transform}")
    parser.add_argument("--budget", default="{}",
                        help="JSON of CmcConfig fields (epochs, batch_size, min_steps, lr)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    budget = CmcConfig(name="diagnosis", new_model="independent", **json.loads(args.budget))
    for seed in map(int, args.seeds.split(",")):
        stats = f"{args.run}/stats/{args.cmc}-s{seed}"
        with np.load(f"{stats}.features.npz", allow_pickle=False) as data:
            old, new, labels = (torch.from_numpy(data[key]) for key in ("old", "new", "labels"))
        old_space, new_space = OldSpaceStats.load(f"{stats}.old_space.npz"), OldSpaceStats.load(f"{stats}.new_space.npz")
        old_test = read_embeddings(f"{args.run}/embeddings/old/test")
        new_test = read_embeddings(f"{args.run}/embeddings/independent-s{seed}/test")
        old_gallery = old_test.vectors_of(new_test.ids)
        known = [old_space.classes.index(name) for name in old_space.old_classes]
        seen = np.isin(new_test.labels, known)
        print(f"seed {seed} old/old: {_score(old_gallery, old_gallery, new_test.labels, new_test.ids, seen)}; new/new: "
              f"{_score(new_test.vectors, new_test.vectors, new_test.labels, new_test.ids, seen)}")
        for variant in json.loads(args.variants):
            transforms = _fit(variant, old, new, labels, old_space, new_space, seed, budget)
            with torch.no_grad():
                t21 = transforms[BACKWARD](F.normalize(torch.from_numpy(new_test.vectors), dim=1)).numpy()
                t12 = transforms[FORWARD](F.normalize(torch.from_numpy(old_gallery), dim=1)).numpy()
            print(f"seed {seed} {json.dumps(variant)}: T21(new)/old "
                  f"{_score(t21, old_gallery, new_test.labels, new_test.ids, seen)}; new/T12(old) "
                  f"{_score(new_test.vectors, t12, new_test.labels, new_test.ids, seen)}", flush=True)


if __name__ == "__main__":
    main()
