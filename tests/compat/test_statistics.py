import math

import numpy as np
import pytest

from pipeline.compat.statistics import OldSpaceStats, StatisticsMismatch, boundary_angle, compute_old_space_stats


def test_centers_and_max_boundary_by_hand():
    # class 0: unit vectors at 0 and 90 degrees -> center at 45 degrees, max angle 45 degrees
    features = np.array([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    stats = compute_old_space_stats(features, np.array([0, 0, 1]), ["a", "b"], ["a"], rule="max")
    assert np.allclose(stats.centers[0], [math.sqrt(0.5), math.sqrt(0.5)], atol=1e-6)
    assert np.allclose(stats.centers[1], [-1.0, 0.0])
    assert stats.boundaries[0] == pytest.approx(math.pi / 4, abs=1e-6)
    assert stats.boundaries[1] == pytest.approx(0.0, abs=1e-3)
    assert np.allclose(stats.feature_means[0], [1.0, 1.5])  # raw (unnormalised) mean, for BCT rows
    assert stats.counts.tolist() == [2, 1]
    assert stats.old_class_mask().tolist() == [True, False]


def test_classifier_rows_replace_the_centers_of_the_old_models_classes():
    features = np.array([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    stats = compute_old_space_stats(features, np.array([0, 0, 1]), ["a", "b"], ["a"], rule="max",
                                    classifier_rows={"a": np.array([0.0, 5.0])})
    assert np.allclose(stats.centers[0], [0.0, 1.0])   # the row, normalised
    assert np.allclose(stats.centers[1], [-1.0, 0.0])  # a class the old model never saw keeps its mean
    assert stats.boundaries[0] == pytest.approx(math.pi / 2, abs=1e-6)  # (1, 0) is 90 degrees from the row


def test_boundary_rules():
    angles = np.array([0.1, 0.2, 0.3, 0.4, 3.0])
    assert boundary_angle(angles, "max") == 3.0
    assert boundary_angle(angles, "quantile", 0.5) == pytest.approx(0.3)
    # IQR: q1 0.2, q3 0.4 -> fence 0.7, so the outlier 3.0 is trimmed
    assert boundary_angle(angles, "iqr") == pytest.approx(0.4)


def test_every_class_needs_images():
    with pytest.raises(StatisticsMismatch, match=r"no training images for classes \['c'\]"):
        compute_old_space_stats(np.ones((2, 2)), np.array([0, 1]), ["a", "b", "c"], ["a"])


def test_save_and_load_roundtrip_without_pickle(tmp_path):
    stats = compute_old_space_stats(np.random.default_rng(0).normal(size=(20, 4)), np.arange(20) % 2, ["x", "y"], ["x"])
    stats.save(tmp_path / "s.npz")
    loaded = OldSpaceStats.load(tmp_path / "s.npz")
    assert loaded.classes == ["x", "y"] and loaded.old_classes == ["x"] and loaded.boundary_rule == "quantile"
    assert np.array_equal(loaded.centers, stats.centers) and np.array_equal(loaded.boundaries, stats.boundaries)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        OldSpaceStats.load(tmp_path / "missing.npz")


def test_a_file_that_is_not_statistics_is_named(tmp_path):
    np.savez(tmp_path / "other.npz", weights=np.ones(3))
    with pytest.raises(StatisticsMismatch, match="other.npz: not an old-space statistics file"):
        OldSpaceStats.load(tmp_path / "other.npz")
