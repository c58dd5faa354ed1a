"""Image grids: many NHWC pictures as one HWC uint8 image for PNG files and TensorBoard."""

from __future__ import annotations

import math

import numpy as np


def grid(images: np.ndarray, columns: int = 0, gap: int = 1) -> np.ndarray:
  """NHWC images with values in [0, 1] (clipped) tiled row by row, `columns` wide (0: a square), `gap` pixels
  of white between them; an HWC uint8 image."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, h, w, c = images.shape
  columns = columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / columns)
  canvas = np.ones((rows * (h + gap) + gap, columns * (w + gap) + gap, c), np.float32)
  for i, image in enumerate(images):
    top, left = gap + (i // columns) * (h + gap), gap + (i % columns) * (w + gap)
    canvas[top:top + h, left:left + w] = image
  return np.round(canvas * 255).astype(np.uint8)


def pairs(originals: np.ndarray, reconstructions: np.ndarray, columns: int = 8) -> np.ndarray:
  """A grid whose rows alternate: `columns` originals, then their reconstructions below them."""
  n = len(originals) - len(originals) % columns or len(originals)
  columns = min(columns, n)
  rows = []
  for start in range(0, n, columns):
    rows += [originals[start:start + columns], reconstructions[start:start + columns]]
  return grid(np.concatenate(rows), columns)
