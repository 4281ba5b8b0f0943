"""What a model reads: its images' mode, size and normalisation, declared once per model, and
the random crops and flips it trains on.

A dataset stores encoded images at their own size; each model (a project artifact, a
TorchScript or ONNX file, a timm network) declares the input it was trained on. Decoding
(``eval_pixels``) turns an image into that size as uint8 pixels with torchvision's eval
transform, as timm and most deployed models define it: the shorter side resized to ``resize``,
then a center crop of ``input_size`` (an image of the input size passes unchanged unless a
larger ``resize`` is declared); the
model's side (``model_input``) scales them to [0, 1] and normalises per
channel. A project model reads ``(x / 255 - 0.5) / 0.5``, the [-1, 1] range it always trained on.
At train time ``train_pixels`` draws a random resized crop (and flip, jitter) of each image
instead, from its own seed: a stream reproduces its epochs' images from its seed alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from pipeline.config import AugmentConfig, Preprocessing

if TYPE_CHECKING:
    import torch
    from torchvision.transforms import v2

# torch and torchvision are imported where they are used: the encoding's decoding tasks read
# images with PIL alone (torch costs a process a second and hundreds of MB), and torchvision,
# which costs 1.6 s more (it imports torch._dynamo), only where an image is resized, cropped or
# augmented, which the demo's images, at their model's size already, never are.


def eval_pixels(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """A decoded image as the model's uint8 pixels [C, S, S]: converted to its mode, the shorter
    side resized to ``resize`` (aspect kept), then center-cropped to ``input_size``."""
    image = image.convert(preprocessing.mode)
    size, short = preprocessing.input_size, preprocessing.resize or preprocessing.input_size
    if image.size != (size, size) or short != size:  # else both steps leave the image as it is
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        image = F.center_crop(F.resize(image, [short], InterpolationMode(preprocessing.interpolation)), [size, size])
    pixels = np.array(image)  # a copy: PIL's array view is read-only
    return pixels[None] if preprocessing.mode == "L" else pixels.transpose(2, 0, 1)


def train_transform(preprocessing: Preprocessing, augment: AugmentConfig) -> v2.Transform:
    """The v2 transform of one training image (a PIL image in the model's mode) into uint8 [C, S, S]."""
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import InterpolationMode

    steps = [v2.PILToTensor(),
             v2.RandomResizedCrop(preprocessing.input_size, scale=augment.crop_scale, ratio=augment.crop_ratio,
                                  interpolation=InterpolationMode(preprocessing.interpolation), antialias=True)]
    if augment.flip:
        steps.append(v2.RandomHorizontalFlip())
    if augment.color_jitter > 0:
        strength = augment.color_jitter
        steps.append(v2.ColorJitter(brightness=strength, contrast=strength,
                                    saturation=strength if preprocessing.mode == "RGB" else 0))
    return v2.Compose(steps)


def train_pixels(image: Image.Image, preprocessing: Preprocessing, transform: v2.Transform, seed: int) -> np.ndarray:
    """One training image through ``transform`` (``train_transform``) on its own draw: torch's
    generator seeded with ``seed`` inside a fork, so that no other draw moves it (v2 transforms
    draw from torch's global generator, one draw per call)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(image.convert(preprocessing.mode)).numpy()


def model_input(pixels: torch.Tensor | np.ndarray, preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 pixels [N, C, S, S] as the model's float32 input, ``(x / 255 - mean) / std``, on the
    pixels' device."""
    import torch

    pixels = torch.as_tensor(pixels)
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    return (pixels.to(torch.float32) / 255.0 - mean) / std
