"""TensorBoard event files without TensorFlow: written, read back (own reader and TensorBoard's), no TF imported."""

import io
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import writers


def write_sample(logdir):
  with writers.create_default_writer(logdir) as writer:
    writer.write_hparams(
      {
        "model.name": "unet",
        "train.learning_rate": 1e-3,
        "train.num_steps": 7,
        "data.augment.enabled": True,
        "model.pretrained": None,
        "data.patch_size": (64, 64),
      }
    )
    writer.write_scalars(1, {"train/loss": 0.75, "train/dice": np.float32(0.25)})
    writer.write_scalars(2, {"train/loss": jnp.asarray(0.5)})
    image = np.zeros((1, 6, 10, 3), np.uint8)
    image[0, 2, 3] = (255, 0, 0)
    writer.write_images(2, {"validation/overlay": image})
    writer.write_images(2, {"validation/grid": np.full((5, 4, 4, 1), 0.5, np.float32)})


def test_scalars_images_hparams_round_trip(tmp_path):
  write_sample(tmp_path)
  assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
  scalars = writers.read_scalars(tmp_path)
  assert scalars["train/loss"] == [(1, 0.75), (2, 0.5)]
  assert scalars["train/dice"] == [(1, 0.25)]
  assert writers.read_tags(tmp_path) >= {"validation/overlay", "validation/grid", "_hparams_/session_start_info"}

  from PIL import Image  # pylint: disable=g-import-not-at-top

  images = {
    value.tag: value.image
    for path in tmp_path.glob("events.out.tfevents.*")
    for event in writers.read_events(path)
    for value in event.summary.value
    if value.HasField("image")
  }
  overlay = np.asarray(Image.open(io.BytesIO(images["validation/overlay"].encoded_image_string)))
  assert overlay.shape == (6, 10, 3) and tuple(overlay[2, 3]) == (255, 0, 0) and overlay.sum() == 255
  grid = np.asarray(Image.open(io.BytesIO(images["validation/grid"].encoded_image_string)))
  assert grid.shape[:2] == (8, 16)  # 5 images, 4 per row -> 2 x 4 tiles of 4 x 4.
  assert grid[:4].min() == 128 and grid[4:, 4:].max() == 0  # 0.5 -> 128; padding tiles stay black.


def test_tensorboard_reads_the_files(tmp_path):
  """An independent reader: TensorBoard's own event accumulator (TensorBoard is optional, for viewing)."""
  event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
  write_sample(tmp_path)
  acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0})
  acc.Reload()
  assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 0.75), (2, 0.5)]
  assert [e.width for e in acc.Images("validation/overlay")] == [10]
  from tensorboard.plugins.hparams import plugin_data_pb2  # pylint: disable=g-import-not-at-top

  content = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
  hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
  assert hparams["model.name"].string_value == "unet"
  assert hparams["train.learning_rate"].number_value == pytest.approx(1e-3)
  assert hparams["data.augment.enabled"].bool_value is True
  assert hparams["data.patch_size"].string_value == "(64, 64)"
  assert "model.pretrained" not in hparams


def test_events_land_in_a_bucket_workdir(bucket, tmp_path):
  """A gs:// workdir gets its event file in the bucket (through etils.epath, as every other output)."""
  write_sample("gs://my-bucket/runs/a")
  files = list((bucket / "my-bucket" / "runs" / "a").glob("events.out.tfevents.*"))
  assert len(files) == 1 and not (tmp_path / "gs:").exists()
  assert writers.read_scalars("gs://my-bucket/runs/a")["train/loss"] == [(1, 0.75), (2, 0.5)]
  assert writers.read_scalars(files[0].parent) == writers.read_scalars("gs://my-bucket/runs/a")


def test_just_logging_writes_no_files(tmp_path):
  with writers.create_default_writer(tmp_path / "w", just_logging=True) as writer:
    writer.write_scalars(1, {"a": 1.0})
    writer.write_images(1, {"b": np.zeros((1, 2, 2, 3), np.uint8)})
  assert not (tmp_path / "w").exists()


def test_bad_image_shape_is_named(tmp_path):
  with writers.create_default_writer(tmp_path) as writer, pytest.raises(ValueError, match="'bad'.*N, H, W, C"):
    writer.write_images(1, {"bad": np.zeros((4, 4, 3))})


def test_corrupt_record_is_refused(tmp_path):
  write_sample(tmp_path)
  path = next(tmp_path.glob("events.out.tfevents.*"))
  data = bytearray(path.read_bytes())
  data[-10] ^= 0xFF  # Inside the last record's payload.
  path.write_bytes(bytes(data))
  with pytest.raises(ValueError, match="corrupt event record"):
    writers.read_scalars(tmp_path)


def test_report_progress_rates_and_scalars(tmp_path):
  with writers.create_default_writer(tmp_path) as writer:
    report = writers.ReportProgress(num_train_steps=10, every_steps=4, writer=writer)
    fired = [
      report(step, t=float(t))
      for step, t in [
        (1, 100),
        (2, 101),
        (3, 102),
        (4, 103),
        (5, 104),
        (6, 105),
        (7, 106),
        (8, 108),
        (9, 110),
        (10, 112),
      ]
    ]
  assert fired == [False, False, False, True, False, False, False, True, False, True]
  rates = writers.read_scalars(tmp_path)["steps_per_sec"]
  assert rates == [(4, 1.0), (8, pytest.approx(4 / 5)), (10, 0.5)]  # (4-1)/(103-100), (8-4)/(108-103), 2/4 s.
  assert writers._format_secs(3725) == "1h02m" and writers._format_secs(65) == "1m05s"


def test_profile_writes_a_trace(tmp_path):
  profile = writers.Profile(logdir=tmp_path, num_profile_steps=2, first_step=1)
  f = jax.jit(lambda x: x @ x)
  x = jnp.ones((8, 8))
  for step in range(1, 5):
    f(x).block_until_ready()
    profile(step)
  profile.close()
  assert list(tmp_path.glob("plugins/profile/*/*.xplane.pb"))


def test_no_tensorflow_or_torch_imported():
  """Importing the whole CLI path and writing events loads neither TensorFlow nor PyTorch (even when installed)."""
  code = textwrap.dedent("""
      import sys, tempfile
      import jaxseg.main, jaxseg.cli, jaxseg.train, jaxseg.evaluate, jaxseg.predict, jaxseg.experiment
      from jaxseg import writers
      with writers.create_default_writer(tempfile.mkdtemp()) as w:
        w.write_scalars(1, {"a": 1.0})
      jaxseg.cli.hide_gpus_from_tensorflow()
      print(sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "torch", "tensorboard"}))
  """)
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
  assert result.stdout.strip().splitlines()[-1] == "[]"
