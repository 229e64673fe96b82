"""Sharding: errors on one device here, and the 8-device suite in a subprocess."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from lamina import shard_batch, shard_params
from lamina._src.train.sharding import megatron_rules

HERE = pathlib.Path(__file__).resolve().parent


def one_device_mesh(names=("data", "model")):
    return Mesh(np.array(jax.devices()[:1]).reshape((1,) * len(names)), names)


@pytest.mark.slow
def test_eight_device_suite():
    """tests/multidevice under 8 simulated CPU devices (1x8, 8x1 and 2x4 meshes)."""
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env = dict(os.environ, XLA_FLAGS=flags.strip())
    run = subprocess.run(  # one process: its 8 devices already use both cores
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
         str(HERE / "multidevice")],
        cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=600,
    )
    print(run.stdout[-3000:], run.stderr[-3000:])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = run.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "skipped" not in summary and "failed" not in summary


def test_shard_batch_on_one_device_keeps_values():
    xs, ys = jnp.arange(12.0).reshape(4, 3), jnp.arange(4)
    placed = shard_batch((xs, ys), one_device_mesh())
    assert placed[0].sharding.spec == P("data")
    np.testing.assert_array_equal(placed[0], np.arange(12.0).reshape(4, 3))
    np.testing.assert_array_equal(placed[1], np.arange(4))


def test_mesh_errors():
    with pytest.raises(ValueError, match=r"shard_batch: the mesh needs an axis named 'data', got axes \('model',\)"):
        shard_batch(jnp.ones((4, 3)), one_device_mesh(("model",)))
    with pytest.raises(TypeError, match=r"shard_batch: expected a jax.sharding.Mesh.*got list"):
        shard_batch(jnp.ones((4, 3)), [0])
    with pytest.raises(ValueError, match=r"shard_batch: xs: shape \(\) cannot be split"):
        shard_batch(jnp.float32(1.0), one_device_mesh())
    with pytest.raises(ValueError, match=r"shard_params: rule for '0.W' uses mesh axis 'tensor', but the mesh has axes \('data', 'model'\)"):
        shard_params([{"W": jnp.ones((2, 2))}], one_device_mesh(), rules=[(r"0\.W", P("tensor", None))])


def test_megatron_rules_alternate_rows_and_columns():
    rule = megatron_rules()
    W = jnp.ones((4, 4))
    specs = [rule(p, W if p.endswith("W") else jnp.ones(4)) for p in ["0.W", "0.b", "1.W", "1.b", "2.W", "2.b"]]
    assert specs == [P("model", None), P("model"), P(None, "model"), None, P("model", None), P("model")]
    assert rule("3.scale", jnp.ones(4)) is None


def test_default_rules_replicate_without_model_axis():
    params = [{"W": jnp.ones((4, 2)), "b": jnp.ones(4)}]
    placed = shard_params(params, one_device_mesh(("data",)))
    assert placed[0]["W"].sharding.spec == P()
