import pytest
import torch

from pipeline.config import TransformConfig
from pipeline.model.transformations import FeatureTransform, TransformBlock


def _by_hand(path: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A path as docs/design.md writes it, from its parameters: three times a linear map, batch
    norm with its running statistics (eval mode), then PReLU."""
    layers = list(path)
    assert [type(layer).__name__ for layer in layers] == ["Linear", "BatchNorm1d", "PReLU"] * 3
    for linear, norm, prelu in zip(layers[0::3], layers[1::3], layers[2::3]):
        x = x @ linear.weight.T + linear.bias
        x = (x - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias
        x = torch.where(x >= 0, x, prelu.weight * x)
    return x


def test_block_is_skip_plus_paths():
    torch.manual_seed(0)
    block = TransformBlock(4, 4, paths=2, hidden=8)
    for _ in range(3):  # running statistics other than the initial 0 and 1
        block(torch.randn(16, 4) * 3 + 1)
    block.eval()
    x = torch.randn(5, 4)
    with torch.no_grad():
        expected = x + _by_hand(block.paths[0], x) + _by_hand(block.paths[1], x)
        assert torch.allclose(block(x), expected, atol=1e-5)


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
