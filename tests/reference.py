"""Brute-force retrieval metrics: the independent reference the tests compare against."""

import numpy as np
from sklearn.metrics import average_precision_score


def reference(query, qlabels, gallery, glabels, qids, gids, topk=(1, 5)):
    """One query at a time: full similarity row, self removed, sklearn AP, stable sort for ranks."""
    query, gallery = np.asarray(query, np.float64), np.asarray(gallery, np.float64)
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    out = {f"top{k}": [] for k in topk} | {"ap": [], "ap_at_r": []}
    for i in range(len(q)):
        keep = gids != qids[i]
        scores = (g @ q[i])[keep]
        relevant = glabels[keep] == qlabels[i]
        order = np.argsort(-scores, kind="stable")
        for k in topk:
            out[f"top{k}"].append(float(relevant[order[:k]].any()))
        r = relevant.sum()
        out["ap"].append(average_precision_score(relevant, scores) if r else np.nan)
        ranked = relevant[order]
        precision = np.cumsum(ranked) / np.arange(1, len(ranked) + 1)
        out["ap_at_r"].append((precision[:r] * ranked[:r]).sum() / r if r else np.nan)
    return {k: np.array(v) for k, v in out.items()}
