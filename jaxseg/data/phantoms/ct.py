"""Synthetic contrast-enhanced abdominal CT (portal venous phase).

Each case is a 128 x 128 x 40 volume, in-plane spacing 3.0-3.4 mm (field of
view 384-435 mm), 5 mm axial slices, from just above the right diaphragm dome
down to below the kidneys. Values are int16 HU.

Anatomy is built in a patient frame (mm): x towards the patient's right,
y anterior, z superior, with x = y = 0 at the body centre and z = 0 at the
right diaphragm dome. The NIfTI affine is RAS (positive diagonal), so voxel
index i grows towards the patient's right: in radiological display the
liver (label 1, patient right) is on the image left. Paired structures are
built once in a mirrored frame (xm = +x on the right, -x on the left, so xm
grows laterally on both sides).

Labels (ground truth, evaluated at voxel centres before any blur or noise):
0 background, 1 liver (including its vessels), 2 spleen, 3 kidney (both
kidneys, cortex and medulla, not the renal sinus), 4 liver tumour.
Approximate HU: air -1000, fat -100, muscle 50, liver 95-110, spleen 10-20
above liver, kidney cortex 150-180 with medulla 40-70 lower, tumours 30-60,
aorta 150-190, vertebral bodies 400-500 with a 800-1000 cortical rim.
"""

import numpy as np
from scipy import ndimage

from jaxseg.data.phantoms import common

SHAPE = (128, 128, 40)
SLICE_MM = 5.0
LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney": 3, "tumour": 4}

_TUMOUR_COUNT_PROBS = (0.25, 0.35, 0.25, 0.15)  # P(0), P(1), P(2), P(3).
_DEFORM_MM = 4.0  # Standard deviation of each displacement component.
_DEFORM_WAVES = 4
# Largest displacement along an axis: each of the waves adds at most
# _DEFORM_MM * sqrt(2 / waves).
_DEFORM_MARGIN_MM = _DEFORM_MM * np.sqrt(2.0 * _DEFORM_WAVES) + 0.5


def _uniform(rng, lo, hi):
  return float(rng.uniform(lo, hi))


def _in_plane_dilate(mask: np.ndarray) -> np.ndarray:
  """Grows a [X, Y, Z] mask by one voxel in-plane: a ~3 mm fat plane."""
  grown = mask.copy()
  grown[1:] |= mask[:-1]
  grown[:-1] |= mask[1:]
  result = grown.copy()
  result[:, 1:] |= grown[:, :-1]
  result[:, :-1] |= grown[:, 1:]
  return result


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Distances (mm) from points [N, 3] to the segment from a to b."""
  ab = b - a
  t = np.clip((points - a) @ ab / max(float(ab @ ab), 1e-6), 0.0, 1.0)
  return np.linalg.norm(points - a - t[:, None] * ab, axis=1)


def _vessel_tree(rng, points: np.ndarray, root: np.ndarray, radius_mm: float) -> np.ndarray:
  """Mask over `points` [N, 3] (liver voxels, mm) of a small branching tree.

  Three branches run from `root` to random liver points; each ends in two
  thinner side branches 25-45 mm long.
  """
  inside = np.zeros(len(points), bool)
  for _ in range(3):
    end = points[rng.integers(len(points))]
    inside |= _segment_distance(points, root, end) < radius_mm
    for _ in range(2):
      direction = rng.normal(size=3)
      tip = end + direction / np.linalg.norm(direction) * rng.uniform(25, 45)
      inside |= _segment_distance(points, end, tip) < 0.6 * radius_mm
  return inside


def _spine(rng, x, y, z, y_body):
  """Vertebrae with discs, posterior elements and the spinal canal.

  Returns:
    (cancellous bone, cortical rim, disc, posterior elements, canal) masks
    and the y (mm) of the vertebral bodies' front surface.
  """
  growth = 1.0 + 0.15 * np.clip(-z / 180.0, 0.0, 1.0)
  ax, ay = _uniform(rng, 20, 24) * growth, _uniform(rng, 16, 19) * growth
  radius = common.superellipsoid_radius((x, y - y_body), (ax, ay), 2.3)
  period, disc_mm = _uniform(rng, 33, 38), _uniform(rng, 7, 9)
  phase = np.mod(z - _uniform(rng, 0, period), period) / period
  is_disc = phase < disc_mm / period
  body = radius < 1.0
  rim = radius > 1.0 - 2.5 / ay
  y_canal = y_body - ay - 10.0
  canal_r = np.hypot(x, y - y_canal)
  arch = (canal_r >= 9.0) & (canal_r < 15.0) & (y < y_canal + 4.0)
  spinous = (np.abs(x) < 4.0) & (y < y_canal - 12.0) & (y > y_canal - 45.0)
  transverse = (np.abs(x) < 45.0) & (np.abs(y - y_canal) < 4.0) & (phase > 0.45) & (phase < 0.7)
  posterior = (arch | spinous | transverse) & ~is_disc
  return (
    body & ~rim & ~is_disc,
    body & rim & ~is_disc,
    body & is_disc,
    posterior,
    canal_r < 9.0,
    y_body + float(np.mean(ay)),
  )


def _ribs(rng, xm, y, z, a_wall, b_wall):
  """Rib and costal cartilage masks inside the muscular wall.

  In an axial slice each rib shows as an arc: ribs slope down from the spine
  (posterior, angle -90 deg) to the front (+90 deg).
  """
  wall_r = common.superellipsoid_radius((xm, y), (a_wall, b_wall))
  band = (wall_r > 1.0 - 9.0 / b_wall) & (wall_r < 1.0 - 2.0 / b_wall)
  theta = np.arctan2(y / b_wall, xm / a_wall)
  drop = _uniform(rng, 70, 100)
  bone = np.zeros(z.shape, bool)
  cartilage = np.zeros(z.shape, bool)
  # Ribs 7 to 12, from the top: the last two are short floating ribs.
  for i, theta_end in enumerate((1.3, 1.2, 1.0, 0.7, 0.0, -0.35)):
    z_posterior = 20.0 - 26.0 * i + _uniform(rng, -4, 4)
    z_rib = z_posterior - drop * (theta + np.pi / 2) / np.pi
    on_rib = band & (np.abs(z - z_rib) < 6.0) & (theta > -1.15)
    on_rib &= theta < theta_end
    bone |= on_rib & (theta < 0.8)
    cartilage |= on_rib & (theta >= 0.8)
  return bone, cartilage


class _Frame:
  """Deformed patient coordinates (mm) and the undeformed axes that bound them.

  Shapes are evaluated only in a box around their centre; the box is padded
  by the largest displacement the deformation can produce.
  """

  def __init__(self, axes: common.Coords, coords: common.Coords):
    self.axes = axes
    self.coords = coords

  def crop(self, centre, half_extent: float, mirror: bool = False):
    """Returns (box slices, (x, y, z) in the box); x negated if `mirror`."""
    world = (-centre[0] if mirror else centre[0], centre[1], centre[2])
    box = common.box_slices(self.axes, world, half_extent + _DEFORM_MARGIN_MM)
    x, y, z = (c[box] for c in self.coords)
    return box, (-x if mirror else x, y, z)

  def radius(self, centre, semi, rotation=None, exponent: float = 2.0, mirror: bool = False) -> np.ndarray:
    """Superellipsoid radius over the whole volume (inf outside its box)."""
    # Every point of a (rotated) superellipsoid with exponent e >= 2 lies
    # within max(semi) * 3^(1/2 - 1/e) of its centre.
    half = float(np.max(semi)) * 3.0 ** (0.5 - 1.0 / exponent)
    box, p = self.crop(centre, half, mirror)
    radius = np.full(SHAPE, np.inf, np.float32)
    radius[box] = common.superellipsoid_radius(common.to_local(p, centre, rotation), semi, exponent)
    return radius


def _kidney(rng, frame: _Frame, mirror: bool, y_spine: float, z_centre: float, scale: float):
  """Kidney (parenchyma, medulla, renal sinus, pelvis) masks.

  Built in the mirrored frame (x grows laterally): the long axis tilts so the
  upper pole is medial and posterior, the hilum faces anteromedially.
  """
  semi = np.array([_uniform(rng, 24, 28), _uniform(rng, 20, 24), _uniform(rng, 50, 58)]) * scale
  rotation = common.rotation_matrix(np.radians([_uniform(rng, 5, 15), -_uniform(rng, 10, 20), -_uniform(rng, 20, 40)]))
  centre = (_uniform(rng, 58, 66), y_spine + _uniform(rng, -2, 6), z_centre)
  box, p = frame.crop(centre, float(np.max(semi)), mirror)
  local = common.to_local(p, centre, rotation)
  radius = common.superellipsoid_radius(local, semi)
  sinus_local = common.to_local(local, (-0.9 * semi[0], 0.0, 0.0))
  sinus = common.superellipsoid_radius(sinus_local, semi * np.array([0.75, 0.55, 0.45])) < 1.0
  pelvis = common.superellipsoid_radius(sinus_local, semi * np.array([0.4, 0.3, 0.25])) < 1.0
  parenchyma = (radius < 1.0) & ~sinus
  pyramids = np.cos(5.0 * np.arctan2(local[2], local[0])) > -0.2
  parts = (parenchyma, parenchyma & (radius < 0.78) & pyramids, sinus & (radius < 1.0), pelvis & (radius < 1.0))
  full = []
  for part in parts:
    mask = np.zeros(SHAPE, bool)
    mask[box] = part
    full.append(mask)
  return full


def _stomach(rng, frame: _Frame, scale: float):
  """Stomach (left upper quadrant): normalised radius and gas-filled part."""
  centre = (_uniform(rng, 38, 52), _uniform(rng, 22, 36), -40.0)
  semi = np.array([_uniform(rng, 32, 42), _uniform(rng, 24, 32), _uniform(rng, 38, 50)]) * scale
  radius = frame.radius(centre, semi, common.rotation_matrix(np.radians([_uniform(rng, -15, 15), 0, 0])), mirror=True)
  # Gas floats to the front (anterior, +y) of a supine patient's stomach.
  gas_level = centre[1] + semi[1] * _uniform(rng, 0.0, 0.5)
  return radius, frame.coords[1] > gas_level


def _spleen(rng, frame: _Frame, scale: float) -> np.ndarray:
  """Spleen along the left posterolateral wall, concave on its medial side."""
  centre = np.array([_uniform(rng, 78, 88), _uniform(rng, -25, -10), _uniform(rng, -60, -45)])
  rotation = common.rotation_matrix(np.radians([_uniform(rng, -10, 10), 0, -_uniform(rng, 30, 50)]))
  semi = np.array([_uniform(rng, 26, 32), _uniform(rng, 50, 65), _uniform(rng, 45, 55)]) * scale
  shape = frame.radius(centre, semi, rotation, mirror=True) < 1.0
  hilum_centre = centre - 1.7 * semi[0] * rotation[:, 0]
  hilum = frame.radius(hilum_centre, semi * np.array([1.0, 0.6, 0.6]), rotation, mirror=True) < 1.0
  return shape & ~hilum


def _liver_shape(rng, frame: _Frame, scale: float) -> np.ndarray:
  """Boxy right lobe under the right dome, left lobe across the midline."""
  right_lobe = (
    frame.radius(
      (_uniform(rng, 60, 72), _uniform(rng, 0, 12), _uniform(rng, -72, -58)),
      np.array([_uniform(rng, 66, 78), _uniform(rng, 78, 92), _uniform(rng, 62, 72)]) * scale,
      common.rotation_matrix(np.radians(rng.uniform(-8, 8, size=3))),
      exponent=2.5,
    )
    < 1.0
  )
  left_lobe = (
    frame.radius(
      (_uniform(rng, -25, -10), _uniform(rng, 40, 52), _uniform(rng, -32, -20)),
      np.array([_uniform(rng, 50, 62), _uniform(rng, 26, 34), _uniform(rng, 24, 32)]) * scale,
      common.rotation_matrix(np.radians([0, _uniform(rng, -15, 0), 0])),
    )
    < 1.0
  )
  return right_lobe | left_lobe


def _liver_interior(rng, frame: _Frame, liver: np.ndarray, spacing, y_front: float):
  """Vessels (labelled liver) and 0-3 hypodense tumours inside the liver.

  Returns:
    (vessel mask, tumour mask, tumour HU [X, Y, Z] valid inside tumours).
  """
  vessels = np.zeros(SHAPE, bool)
  tumour = np.zeros(SHAPE, bool)
  tumour_hu = np.zeros(SHAPE, np.float32)
  liver_idx = np.nonzero(liver)
  if not len(liver_idx[0]):
    return vessels, tumour, tumour_hu
  x, y, z = frame.coords
  points = np.stack([x[liver_idx], y[liver_idx], z[liver_idx]], axis=1)
  porta = np.array([35.0, _uniform(rng, 0, 15), -75.0])
  hepatic = np.array([20.0, y_front + 14.0, -5.0])
  vessels[liver_idx] = _vessel_tree(rng, points, porta, 5.0) | _vessel_tree(rng, points, hepatic, 4.0)
  box = tuple(slice(i.min(), i.max() + 1) for i in liver_idx)
  depth_mm = np.zeros(SHAPE, np.float32)
  depth_mm[box] = ndimage.distance_transform_edt(liver[box], sampling=spacing)
  num_tumours = rng.choice(len(_TUMOUR_COUNT_PROBS), p=_TUMOUR_COUNT_PROBS)
  for _ in range(num_tumours):
    radius = _uniform(rng, 6, 20)
    candidates = np.flatnonzero(depth_mm > 0.7 * radius)
    if not len(candidates):
      continue
    centre_idx = np.unravel_index(rng.choice(candidates), SHAPE)
    centre = [float(c[centre_idx]) for c in (x, y, z)]
    tumour_r = frame.radius(
      centre, radius * rng.uniform(0.8, 1.2, size=3), common.rotation_matrix(rng.uniform(0, np.pi, 3))
    )
    new = (tumour_r < 1.0) & liver
    tumour |= new
    # Slightly darker (necrotic) centre.
    tumour_hu[new] = _uniform(rng, 30, 60) - 15.0 * (tumour_r[new] < 0.5)
  return vessels, tumour, tumour_hu


def generate_case(rng: np.random.Generator) -> common.PhantomCase:
  """Generates one abdominal CT case.

  Args:
    rng: the case's random generator; the case is a pure function of it.

  Returns:
    PhantomCase with int16 HU image [128, 128, 40], uint8 labels (LABELS) and
    a RAS affine in mm.
  """
  s = _uniform(rng, 3.0, 3.4)
  spacing = (s, s, SLICE_MM)
  nx, ny, _ = SHAPE
  body_offset = (_uniform(rng, -8, 8), _uniform(rng, -15, 5))
  dome_index = _uniform(rng, 35.5, 37.5)
  axes = common.grid_axes(
    SHAPE, spacing, ((nx - 1) / 2 + body_offset[0] / s, (ny - 1) / 2 + body_offset[1] / s, dome_index)
  )
  x, y, z = common.deform(
    rng, common.voxel_grid(axes), amplitude_mm=_DEFORM_MM, wavelength_mm=(150.0, 350.0), num_waves=_DEFORM_WAVES
  )
  frame = _Frame(axes, (x, y, z))
  scale = _uniform(rng, 0.9, 1.08)

  # Body wall: skin ellipse, subcutaneous fat, muscle, then the cavity.
  a, b = _uniform(rng, 140, 170), _uniform(rng, 100, 122)
  fat_mm, muscle_mm = _uniform(rng, 8, 28), _uniform(rng, 8, 14)
  body = common.superellipsoid_radius((x, y), (a, b)) < 1.0
  a_wall, b_wall = a - fat_mm, b - fat_mm
  inner = common.superellipsoid_radius((x, y), (a_wall, b_wall)) < 1.0
  cavity = common.superellipsoid_radius((x, y), (a_wall - muscle_mm, b_wall - muscle_mm)) < 1.0
  xm = np.abs(x)

  # Diaphragm: two domes, the left ~1 cm lower; lungs above, abdomen below.
  radius_mm = _uniform(rng, 80, 100)
  dome_r = -((x - 65) ** 2 + (y - 5) ** 2) / (2 * radius_mm)
  dome_l = -_uniform(rng, 6, 14) - ((x + 65) ** 2 + (y + 5) ** 2) / (2 * radius_mm)
  z_diaphragm = np.maximum(dome_r, dome_l)
  below = z < z_diaphragm - 4.0
  diaphragm = cavity & ~below & (z <= z_diaphragm)
  heart_r = frame.radius((-15.0, 35.0, 42.0), np.array([60, 48, 45]) * scale)
  heart = (heart_r < 1.0) & (z > z_diaphragm) & cavity
  pericardial_fat = (heart_r < 1.12) & (z > z_diaphragm) & cavity & ~heart

  # Spine and the large vessels in front of it.
  y_body = -(b_wall - muscle_mm) + _uniform(rng, 36, 44)
  cancellous, cortical, disc, posterior, canal, y_front = _spine(rng, x, y, z, y_body)
  bone = cancellous | cortical | disc | posterior
  aorta = np.hypot(x + _uniform(rng, 10, 18), y - y_front - 12.0) < _uniform(rng, 9, 12)
  ivc = (
    common.superellipsoid_radius(common.to_local((x, y), (_uniform(rng, 18, 24), y_front + 14.0)), (12.0, 9.0)) < 1.0
  )
  paraspinal = common.superellipsoid_radius(common.to_local((xm, y), (34.0, y_body - 45.0)), (28.0, 25.0)) < 1.0
  psoas_r = 22.0 * np.clip((-z - 60.0) / 100.0, 0.0, 1.0) ** 0.6 + 1e-3
  psoas = np.hypot(xm - 25.0 - 0.8 * psoas_r, y - y_body - 2.0) < psoas_r
  back_muscle = cavity & (y < y_body - 10.0) & (xm < 30.0)
  muscle_block = paraspinal | psoas | back_muscle
  rib, cartilage = _ribs(rng, xm, y, z, a_wall, b_wall)

  # Organs, claimed in priority order; each keeps a fat plane to the others.
  occupied = bone | canal | aorta | ivc | muscle_block
  kidney_r = _kidney(rng, frame, False, y_body, _uniform(rng, -115, -100), scale)
  kidney_l = _kidney(rng, frame, True, y_body, _uniform(rng, -100, -85), scale)
  kidney_parts = [r | l for r, l in zip(kidney_r, kidney_l)]
  free = cavity & ~_in_plane_dilate(occupied)
  kidney = kidney_parts[0] & free
  occupied |= kidney | kidney_parts[2]

  stomach_r, stomach_gas = _stomach(rng, frame, scale)
  stomach = (stomach_r < 1.0) & below & cavity & ~_in_plane_dilate(occupied)
  stomach_gas &= stomach
  occupied |= stomach

  spleen = _spleen(rng, frame, scale) & below & cavity & ~_in_plane_dilate(occupied)
  occupied |= spleen

  liver = _liver_shape(rng, frame, scale) & below & cavity & ~_in_plane_dilate(occupied)
  vessels, tumour, tumour_hu = _liver_interior(rng, frame, liver, spacing, y_front)

  # Intensities (HU), painted back to front.
  texture = common.correlated_noise(rng, SHAPE, (7 / s, 7 / s, 7 / SLICE_MM), 1.0)
  fine_texture = common.correlated_noise(rng, SHAPE, (3 / s, 3 / s, 3 / SLICE_MM), 1.0)
  hu = np.full(SHAPE, -1000.0, np.float32)
  hu[body] = _uniform(rng, -110, -90)
  hu[inner] = _uniform(rng, 40, 60)
  hu[cavity] = -90.0 + 10.0 * texture[cavity]
  bowel = cavity & below & (texture > 0.35) & (y > y_front + 5.0)
  hu[bowel] = 35.0
  hu[bowel & (fine_texture > 2.0)] = -800.0
  lung = cavity & (z > z_diaphragm) & ~heart & ~pericardial_fat
  hu[lung] = -850.0 + 20.0 * texture[lung]
  hu[diaphragm | muscle_block] = 45.0
  hu[pericardial_fat] = -90.0
  hu[heart] = np.where(heart_r[heart] > 0.8, 60.0, 150.0)
  hu[rib] = _uniform(rng, 700, 900)
  hu[cartilage] = 150.0
  hu[stomach] = np.where(stomach_r[stomach] > 0.85, 50.0, 15.0)
  hu[stomach_gas] = -950.0
  liver_base = _uniform(rng, 95, 110)
  hu[liver] = liver_base + 4.0 * fine_texture[liver]
  hu[vessels] = _uniform(rng, 150, 180)
  hu[tumour] = tumour_hu[tumour]
  hu[spleen] = liver_base + _uniform(rng, 10, 20)
  hu[kidney_parts[2]] = -60.0
  hu[kidney_parts[3]] = 10.0
  cortex_hu = _uniform(rng, 150, 180)
  hu[kidney] = cortex_hu
  hu[kidney & kidney_parts[1]] = cortex_hu - _uniform(rng, 40, 70)
  hu[ivc] = _uniform(rng, 100, 130)
  hu[aorta] = _uniform(rng, 150, 190)
  hu[cancellous] = _uniform(rng, 400, 500)
  hu[cortical | posterior] = _uniform(rng, 800, 1000)
  hu[disc] = 90.0
  hu[canal] = 25.0

  # Partial-volume blur and slightly correlated noise, after labels are fixed.
  hu = ndimage.gaussian_filter(hu, (0.7, 0.7, 0.5))
  hu += common.correlated_noise(rng, SHAPE, (0.6, 0.6, 0.0), _uniform(rng, 10, 18))
  image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

  label = np.zeros(SHAPE, np.uint8)
  label[liver] = LABELS["liver"]
  label[tumour] = LABELS["tumour"]
  label[spleen] = LABELS["spleen"]
  label[kidney] = LABELS["kidney"]
  origin = (-(nx - 1) / 2 * s, -(ny - 1) / 2 * s, _uniform(rng, -450, -350))
  return common.PhantomCase(image=image, label=label, affine=common.diagonal_affine(spacing, origin))
