import math

import pytest
import torch

from pipeline.config import HeadConfig
from pipeline.model.heads import ArcFaceHead, CosFaceHead, SoftmaxHead, build_head


def _head(kind, weight, scale=2.0, margin=0.5):
    head = build_head(HeadConfig(kind=kind, scale=scale, margin=margin), weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
    return head


def test_softmax_is_a_plain_product():
    head = _head("softmax", torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
    assert isinstance(head, SoftmaxHead)
    assert torch.allclose(head(torch.tensor([[3.0, 1.0]])), torch.tensor([[5.0, -1.0]]))


def test_cosface_subtracts_margin_from_target_cosine_only():
    head = _head("cosface", torch.tensor([[2.0, 0.0], [0.0, 5.0]]))
    assert isinstance(head, CosFaceHead)
    features = torch.tensor([[3.0, 0.0]])
    assert torch.allclose(head(features, torch.tensor([0])), torch.tensor([[2 * (1 - 0.5), 0.0]]))
    assert torch.allclose(head(features), torch.tensor([[2.0, 0.0]]))


def test_arcface_adds_angular_margin():
    head = _head("arcface", torch.tensor([[1.0, 0.0], [0.0, 1.0]]), scale=2.0, margin=math.pi / 4)
    assert isinstance(head, ArcFaceHead)
    logits = head(torch.tensor([[1.0, 1.0]]), torch.tensor([0]))  # theta = pi/4 to both classes
    assert logits[0, 0].item() == pytest.approx(2 * math.cos(math.pi / 2), abs=1e-6)
    assert logits[0, 1].item() == pytest.approx(2 * math.cos(math.pi / 4), abs=1e-6)


def test_arcface_stays_monotonic_past_pi():
    head = _head("arcface", torch.tensor([[1.0, 0.0], [0.0, 1.0]]), scale=1.0, margin=0.5)
    logits = head(torch.tensor([[-1.0, 0.01]]), torch.tensor([0]))  # theta close to pi
    assert logits[0, 0].item() == pytest.approx(-1.0 - 0.5 * math.sin(0.5), abs=1e-3)
