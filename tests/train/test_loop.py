"""The epoch loop's pieces that need no cluster: budgets, batch order, the config hash."""

import torch

from pipeline.config import CmcConfig, TrainConfig
from pipeline.train.driver import config_hash
from pipeline.train.loop import epoch_order, passes_per_epoch


def test_an_epoch_is_seeded_passes_of_whole_batches():
    order = epoch_order(rows=10, batch_size=3, passes=2, seed=4, epoch=1)
    assert len(order) == 18 and all(len(set(order[i:i + 9].tolist())) == 9 for i in (0, 9))
    assert torch.equal(order, epoch_order(10, 3, 2, 4, 1))
    assert not torch.equal(order, epoch_order(10, 3, 2, 4, 2))
    assert passes_per_epoch(CmcConfig(name="c", new_model="n", epochs=4, min_steps=100), batches_per_pass=5) == 5


def test_a_checkpoint_resumes_under_other_scheduling_but_not_another_config():
    inputs = {"dataset": "/d"}
    base = config_hash(TrainConfig(name="m"), inputs)
    assert config_hash(TrainConfig(name="m", max_failures=3, placement_strategy="SPREAD"), inputs) == base
    assert config_hash(TrainConfig(name="m", lr=0.01), inputs) != base
    assert config_hash(TrainConfig(name="m"), {"dataset": "/other"}) != base
