"""Synthetic brain MRI with a T1-like and a T2-like channel.

Each case is a 96 x 96 x 48 volume of 2 x 2 x 3 mm voxels (field of view
192 x 192 x 144 mm) stored as float32 [X, Y, Z, 2] in arbitrary scanner
units, channel 0 T1-like, channel 1 T2-like. The frame is RAS (x towards the
patient's right, y anterior, z superior) with the origin at the head centre.

Contrast: T1 white matter > grey matter > CSF, T2 CSF > grey matter > white
matter; lesions are hyperintense in T2 and hypointense in T1. The head has a
scalp (fat, bright in T1) and a dark skull; the cortex is folded by a smooth
random field; lateral ventricles and deep grey nuclei sit in the middle. The
image gets partial-volume blur, a smooth multiplicative bias field per
channel and Rician noise (magnitude of a complex Gaussian).

Labels: 0 background (air, scalp, skull), 1 grey matter, 2 white matter,
3 CSF (subarachnoid, sulci, ventricles), 4 lesion (within white matter).
"""

import numpy as np
from scipy import ndimage

from jaxseg.data.phantoms import common

SHAPE = (96, 96, 48)
SPACING_MM = (2.0, 2.0, 3.0)
LABELS = {"background": 0, "grey_matter": 1, "white_matter": 2, "csf": 3, "lesion": 4}

_LESION_COUNT_PROBS = (0.2, 0.2, 0.2, 0.2, 0.1, 0.1)  # P(0) ... P(5).
# Mean intensity per tissue and channel (T1, T2), arbitrary units.
_TISSUE_MEANS = {
  "scalp": (700.0, 450.0),
  "skull": (80.0, 60.0),
  "csf": (250.0, 1000.0),
  "grey_matter": (550.0, 600.0),
  "deep_grey": (600.0, 550.0),
  "white_matter": (800.0, 420.0),
  "lesion": (450.0, 850.0),
}


def _uniform(rng, lo, hi):
  return float(rng.uniform(lo, hi))


def _ventricles(local, scale):
  """Lateral ventricles: two ellipsoids bent down at the horns."""
  x, y, z = local
  mask = np.zeros(x.shape, bool)
  for side in (-1.0, 1.0):
    bent_z = z - 8.0 + 0.012 * y**2
    mask |= (
      common.superellipsoid_radius((x - side * 10.0 * scale, y + 4.0, bent_z), np.array([6.0, 28.0, 8.0]) * scale) < 1.0
    )
  return mask


def generate_case(rng: np.random.Generator) -> common.PhantomCase:
  """Generates one two-channel brain MRI case.

  Args:
    rng: the case's random generator; the case is a pure function of it.

  Returns:
    PhantomCase with float32 image [96, 96, 48, 2] (T1, T2), uint8 labels
    (LABELS) and a RAS affine in mm.
  """
  centre_index = [(n - 1) / 2 + rng.uniform(-2, 2) for n in SHAPE]
  grid = common.voxel_grid(common.grid_axes(SHAPE, SPACING_MM, centre_index))
  deformed = common.deform(rng, grid, amplitude_mm=2.0, wavelength_mm=(60.0, 150.0))
  rotation = common.rotation_matrix(np.radians(rng.uniform(-6, 6, size=3)))
  x, y, z = common.to_local(deformed, (0.0, 0.0, 0.0), rotation)

  # Nested head layers; the brain is slightly narrower at the front.
  semi = np.array([62.0, 76.0, 52.0]) * _uniform(rng, 0.88, 1.0) * (rng.uniform(0.95, 1.05, size=3))
  x_egg = x / (1.0 + 0.06 * np.clip(-y / semi[1], -1.0, 1.0))
  rho = common.superellipsoid_radius((x_egg, y, z), semi)
  rho_csf, rho_skull, rho_scalp = (common.superellipsoid_radius((x_egg, y, z), semi + d) for d in (3.0, 9.0, 14.0))
  # Sulci: clefts along the zero lines of a random field on the brain
  # surface (constant along rays from the centre), a few gyri per 10 cm.
  on_surface = tuple(c / np.maximum(rho, 0.05) for c in (x_egg, y, z))
  gyri = common.plane_wave_field(rng, on_surface, wavelength=(30.0, 50.0), num_waves=10)
  sulci = (np.abs(gyri) < 0.25) & (rho > 1.0 - _uniform(rng, 0.14, 0.22))
  intracranial = rho_csf < 1.0
  # Interhemispheric fissure above the corpus callosum.
  fissure = (z > _uniform(rng, 14.0, 20.0)) & (np.abs(x - 1.5 * np.sin(y / 25.0)) < 1.5)
  brain = (rho < 1.0) & ~sulci & ~fissure
  ventricles = _ventricles((x, y, z), _uniform(rng, 0.8, 1.5)) & brain
  # Cortex: the outer 3.5-4.5 mm of the brain, following every sulcus.
  depth_mm = ndimage.distance_transform_edt(brain, sampling=SPACING_MM)
  cortex = brain & ~ventricles & (depth_mm <= _uniform(rng, 3.5, 4.5))
  deep_grey = np.zeros(SHAPE, bool)
  for side in (-1.0, 1.0):
    deep_grey |= common.superellipsoid_radius((x - side * 21.0, y - 2.0, z + 2.0), (9.0, 17.0, 10.0)) < 1.0
  deep_grey &= brain & ~ventricles & ~cortex
  white = brain & ~ventricles & ~cortex & ~deep_grey
  grey = cortex | deep_grey
  csf = intracranial & ~brain | ventricles

  lesion = np.zeros(SHAPE, bool)
  wm_idx = np.flatnonzero(white)
  num_lesions = rng.choice(len(_LESION_COUNT_PROBS), p=_LESION_COUNT_PROBS)
  for _ in range(num_lesions if len(wm_idx) else 0):
    centre_idx = np.unravel_index(rng.choice(wm_idx), SHAPE)
    centre = [float(c[centre_idx]) for c in (x, y, z)]
    lesion |= common.superellipsoid_radius(common.to_local((x, y, z), centre), rng.uniform(3.0, 8.0, size=3)) < 1.0
  lesion &= white

  label = np.zeros(SHAPE, np.uint8)
  label[grey] = LABELS["grey_matter"]
  label[white] = LABELS["white_matter"]
  label[csf] = LABELS["csf"]
  label[lesion] = LABELS["lesion"]

  regions = (
    ("scalp", (rho_scalp < 1.0) & (rho_skull >= 1.0)),
    ("skull", (rho_skull < 1.0) & ~intracranial),
    ("csf", label == LABELS["csf"]),
    ("grey_matter", label == LABELS["grey_matter"]),
    ("deep_grey", deep_grey),
    ("white_matter", label == LABELS["white_matter"]),
    ("lesion", lesion),
  )
  texture = common.plane_wave_field(rng, (x, y, z), wavelength=(8.0, 30.0), num_waves=6)
  gain = _uniform(rng, 0.8, 1.2)
  noise_std = _uniform(rng, 0.02, 0.04) * _TISSUE_MEANS["white_matter"][0]
  channels = []
  for channel in range(2):
    clean = np.zeros(SHAPE, np.float32)
    for tissue, mask in regions:
      mean = _TISSUE_MEANS[tissue][channel] * _uniform(rng, 0.95, 1.05)
      clean[mask] = mean * (1.0 + 0.02 * texture[mask])
    clean = ndimage.gaussian_filter(clean, (0.6, 0.6, 0.5))
    bias = np.exp(np.float32(0.12) * common.plane_wave_field(rng, grid, wavelength=(150.0, 400.0), num_waves=3))
    signal = gain * bias * clean
    real = signal + noise_std * rng.standard_normal(SHAPE, np.float32)
    imaginary = noise_std * rng.standard_normal(SHAPE, np.float32)
    channels.append(np.hypot(real, imaginary))
  image = np.stack(channels, axis=-1).astype(np.float32)

  origin = [-(n - 1) / 2 * s for n, s in zip(SHAPE, SPACING_MM)]
  return common.PhantomCase(image=image, label=label, affine=common.diagonal_affine(SPACING_MM, origin))
