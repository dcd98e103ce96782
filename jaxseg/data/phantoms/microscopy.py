"""Synthetic 2D fluorescence microscopy of cell nuclei.

Each image is 256 x 256 pixels of 0.5 micrometres (a 128 um field), stored
as a NIfTI volume with a single z slice, [256, 256, 1] uint16 camera counts.
Spacing values are micrometres (the NIfTI header says so); jaxseg's readers
treat them as if they were mm, which only rescales physical units.

Nuclei are randomly placed, slightly irregular ellipses 8-28 um across; some
touch or overlap (where they overlap, each pixel belongs to the nucleus it
is deepest inside, and the fluorescence of both adds up). The image gets
chromatin texture, uneven illumination, optical blur, Poisson shot noise and
Gaussian read noise.

Labels: 0 background, 1 nucleus interior, 2 nucleus boundary: the pixels of
a nucleus with a 4-neighbour outside it (background or another nucleus), a
1 pixel ring at the outer border and 2 pixels between touching nuclei.
"""

import numpy as np
from scipy import ndimage

from jaxseg.data.phantoms import common

SHAPE = (256, 256)
PIXEL_UM = 0.5
LABELS = {"background": 0, "nucleus": 1, "boundary": 2}

_MAX_OVERLAP = 0.2  # Largest fraction of a new nucleus that may lie on others.
_CAMERA_OFFSET = 100.0  # Counts added by the camera to every pixel.


def _uniform(rng, lo, hi):
  return float(rng.uniform(lo, hi))


def _nucleus_radius(rng, x, y, centre, semi, angle):
  """Normalised radius of a rotated ellipse with a wavy outline (pixels)."""
  cos, sin = np.cos(angle), np.sin(angle)
  u = (x - centre[0]) * cos + (y - centre[1]) * sin
  v = -(x - centre[0]) * sin + (y - centre[1]) * cos
  radius = np.hypot(u / semi[0], v / semi[1])
  phi = np.arctan2(v, u)
  for order in (2, 3, 4):
    radius *= 1.0 + 0.03 * np.cos(order * phi + rng.uniform(0, 2 * np.pi))
  return radius


def _instances(rng, x, y):
  """Places nuclei; returns (instance id map [H, W] int32, list of masks)."""
  target = int(rng.integers(12, 30))
  best = np.full(SHAPE, np.inf, np.float32)
  instance = np.zeros(SHAPE, np.int32)
  masks, placed = [], []  # placed: (centre, semi-major axis) per nucleus.
  for _ in range(20 * target):
    if len(masks) == target:
      break
    semi_major = _uniform(rng, 8, 14)
    semi = (semi_major, semi_major * _uniform(rng, 0.6, 1.0))
    if placed and rng.random() < 0.35:
      # Beside an existing nucleus, so that the two touch or overlap.
      other_centre, other_semi = placed[rng.integers(len(placed))]
      direction = rng.normal(size=2)
      direction /= np.linalg.norm(direction)
      centre = other_centre + direction * (other_semi + semi_major) * _uniform(rng, 0.75, 0.95)
    else:
      centre = rng.uniform(0, SHAPE[0], size=2)
    radius = _nucleus_radius(rng, x, y, centre, semi, _uniform(rng, 0, np.pi))
    inside = radius < 1.0
    area = int(inside.sum())
    if area < 20 or (inside & (instance > 0)).sum() > _MAX_OVERLAP * area:
      continue
    take = inside & (radius < best)
    instance[take] = len(masks) + 1
    best[take] = radius[take]
    masks.append(inside)
    placed.append((centre, semi_major))
  return instance, masks


def _inner_boundary(instance: np.ndarray) -> np.ndarray:
  """Instance pixels with a 4-neighbour of another id (not the image edge)."""
  padded = np.pad(instance, 1, mode="edge")
  centre = padded[1:-1, 1:-1]
  differs = np.zeros(instance.shape, bool)
  for neighbour in (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]):
    differs |= neighbour != centre
  return differs & (instance > 0)


def generate_case(rng: np.random.Generator) -> common.PhantomCase:
  """Generates one fluorescence image of nuclei.

  Args:
    rng: the case's random generator; the case is a pure function of it.

  Returns:
    PhantomCase with uint16 counts [256, 256, 1], uint8 labels (LABELS) and
    an affine in micrometres.
  """
  x, y = common.voxel_grid(common.grid_axes(SHAPE, (1.0, 1.0), (0.0, 0.0)))
  instance, masks = _instances(rng, x, y)
  label = np.where(instance > 0, LABELS["nucleus"], LABELS["background"])
  label[_inner_boundary(instance)] = LABELS["boundary"]

  # Fluorescence adds up where nuclei overlap; chromatin makes it grainy.
  chromatin = 1.0 + 0.15 * common.correlated_noise(rng, SHAPE, (1.5, 1.5), 1.0)
  stain = np.zeros(SHAPE, np.float32)
  for inside in masks:
    stain[inside] += _uniform(rng, 0.5, 1.0)
  stain = ndimage.gaussian_filter(stain * chromatin, _uniform(rng, 0.8, 1.6))

  # Illumination falls off from an off-centre optical axis.
  axis = rng.uniform(0.3, 0.7, size=2) * np.array(SHAPE)
  falloff = ((x - axis[0]) ** 2 + (y - axis[1]) ** 2) / float(SHAPE[0]) ** 2
  illumination = np.clip(
    1.0
    - _uniform(rng, 0.3, 0.8) * falloff
    + 0.05 * common.plane_wave_field(rng, (x, y), wavelength=(150.0, 400.0), num_waves=3),
    0.2,
    None,
  )
  photons = illumination * (_uniform(rng, 80, 250) * stain + _uniform(rng, 5, 15))
  counts = rng.poisson(photons) + _CAMERA_OFFSET + rng.normal(0.0, _uniform(rng, 1.0, 3.0), SHAPE)
  image = np.clip(np.rint(counts), 0, np.iinfo(np.uint16).max).astype(np.uint16)

  origin = (*rng.uniform(0.0, 5000.0, size=2), 0.0)
  affine = common.diagonal_affine((PIXEL_UM, PIXEL_UM, 1.0), origin)
  return common.PhantomCase(image=image[:, :, None], label=label.astype(np.uint8)[:, :, None], affine=affine)
