import pytest
import torch

from pipeline.config import TransformConfig
from pipeline.model.transformations import FeatureTransform, TransformBlock


def test_block_is_skip_plus_paths():
    torch.manual_seed(0)
    block = TransformBlock(4, 4, paths=2, hidden=8).eval()
    x = torch.randn(5, 4)
    # The sum is associated differently from the block's, so compare with a float32 tolerance.
    assert torch.allclose(block(x), x + block.paths[0](x) + block.paths[1](x), atol=1e-6)


def test_projection_skip_when_dimensions_differ():
    transform = FeatureTransform(64, 128, TransformConfig(blocks=2, paths=3, hidden=16))
    assert isinstance(transform.blocks[0].skip, torch.nn.Linear) and isinstance(transform.blocks[1].skip, torch.nn.Identity)
    assert len(transform.blocks[0].paths) == 3
    assert transform(torch.randn(6, 64)).shape == (6, 128)


def test_zero_blocks_is_identity_and_refuses_other_dimensions():
    identity = FeatureTransform(8, 8, TransformConfig(blocks=0))
    x = torch.randn(3, 8)
    assert torch.equal(identity(x), x)
    with pytest.raises(ValueError, match="cannot map dimension 8 to dimension 16"):
        FeatureTransform(8, 16, TransformConfig(blocks=0))
