"""save/load: bit-exact safetensors round trips, atomic writes, clear errors, no pickles."""

import errno
import json
import os
import pickle
import re
import stat

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy

import lamina as lm
from lamina import load, load_metadata, save

# Values whose bits a careless conversion would change: signed zero, a NaN
# with a payload, infinities and the smallest subnormal.
SPECIAL_F32 = np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, 3.4e38, 1 / 3], np.float32)
SPECIAL_F32 = np.concatenate([SPECIAL_F32, np.array([0x7FC00123], np.uint32).view(np.float32)])


def bits(a):
    a = np.asarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def mixed_tree():
    rng = np.random.default_rng(0)
    return {
        "dense": ({"W": rng.normal(size=(3, 4)).astype(np.float32), "b": SPECIAL_F32},),
        "half": [rng.normal(size=(5,)).astype(np.float16), np.array([-0.0, 6e-8, 65504], np.float16)],
        "bf16": np.array([1 / 3, -0.0, 1e-40, 3e38, np.nan], np.float32).astype(ml_dtypes.bfloat16),
        "ints": (np.array([-128, 0, 127], np.int8), np.arange(6, dtype=np.int32).reshape(2, 3) - 3,
                 np.array([0, 255], np.uint8), np.array([True, False])),
        "scalar": np.float32(2.5),
        "nothing": None,
        "empty": (),
    }


def test_round_trip_is_bit_exact_and_keeps_structure(tmp_path):
    tree = mixed_tree()
    path = tmp_path / "model.safetensors"
    save(path, tree)
    back = load(path)
    assert jax.tree.structure(back) == jax.tree.structure(tree)
    assert isinstance(back["dense"], tuple) and isinstance(back["half"], list)
    assert back["nothing"] is None and back["empty"] == ()
    for want, got in zip(jax.tree.leaves(tree), jax.tree.leaves(back)):
        assert isinstance(got, jax.Array)
        assert got.dtype == want.dtype and got.shape == np.shape(want)
        np.testing.assert_array_equal(bits(got), bits(want))
    assert back["bf16"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(back["bf16"]).view(np.uint16), tree["bf16"].view(np.uint16))


def test_round_trip_of_64_bit_leaves(tmp_path, x64):
    tree = {"f": np.array([1 / 3, -0.0], np.float64), "i": np.array([2**40, -1], np.int64)}
    save(tmp_path / "m.safetensors", tree)
    back = load(tmp_path / "m.safetensors", like=tree)
    for k in tree:
        assert back[k].dtype == tree[k].dtype
        np.testing.assert_array_equal(bits(back[k]), bits(tree[k]))


def test_load_with_like_params_or_model(tmp_path, key):
    model = lm.serial(lm.Dense(8, act="relu"), lm.LayerNorm(), lm.Dense(3, use_bias=False))
    _, params = model.init(key, (5,))
    path = tmp_path / "model.safetensors"
    save(path, params)
    for like in (params, (model, (5,)), lm.param_shapes(model, (5,))[1]):
        back = load(path, like=like)
        assert jax.tree.structure(back) == jax.tree.structure(params)
        for want, got in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
            np.testing.assert_array_equal(bits(got), bits(want))


def test_file_is_plain_safetensors_for_other_tools(tmp_path, key):
    _, params = lm.mlp([4, 2]).init(key, (3,))
    path = tmp_path / "model.safetensors"
    save(path, params, metadata={"epoch": "7", "note": "ünïcode"})
    tensors = safetensors.numpy.load_file(path)
    assert sorted(tensors) == ["0.W", "0.b", "1.W", "1.b"]
    np.testing.assert_array_equal(tensors["1.W"], np.asarray(params[1]["W"]))
    with safetensors.safe_open(path, framework="numpy") as f:
        meta = f.metadata()
    assert meta["lamina.version"] == lm.__version__ and meta["lamina.format"] == "1"
    assert meta["epoch"] == "7" and meta["note"] == "ünïcode"
    tree = json.loads(meta["lamina.tree"])
    assert tree["tuple"][1] == {"dict": {"W": {"tensor": "1.W"}, "b": {"tensor": "1.b"}}}
    assert load_metadata(path) == meta


def test_torch_reads_bfloat16_bits(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    values = np.array([1 / 3, -0.0, 1e-40, 3e38], np.float32).astype(ml_dtypes.bfloat16)
    save(tmp_path / "w.safetensors", {"w": values})
    got = safetensors.torch.load_file(tmp_path / "w.safetensors")["w"]
    assert got.dtype == torch.bfloat16
    np.testing.assert_array_equal(got.view(torch.int16).numpy().view(np.uint16), values.view(np.uint16))


def test_foreign_file_loads_as_flat_dict(tmp_path):
    path = tmp_path / "foreign.safetensors"
    safetensors.numpy.save_file({"b": np.ones(2, np.float32), "a.x": np.zeros((1, 2), np.int32)}, path)
    back = load(path)
    assert list(back) == ["a.x", "b"]
    np.testing.assert_array_equal(back["b"], np.ones(2, np.float32))


@pytest.mark.parametrize(
    "metadata, cls, pattern",
    [
        ({"epoch": 3}, TypeError, r"metadata must map str to str .* got 'epoch': int 3"),
        ({1: "x"}, TypeError, r"metadata must map str to str .* got 1: str 'x'"),
        ("epoch=3", TypeError, r"metadata must be a dict of str -> str, got str"),
        ({"lamina.version": "9"}, ValueError, r"metadata key 'lamina.version' is reserved"),
    ],
)
def test_bad_metadata_is_refused(tmp_path, metadata, cls, pattern):
    path = tmp_path / "m.safetensors"
    with pytest.raises(cls, match=r"^save\('.*m\.safetensors'\): " + pattern):
        save(path, {"W": np.ones(2, np.float32)}, metadata=metadata)
    assert not path.exists()


class Block:
    """A pytree node that is not a dict, tuple or list."""


@pytest.mark.parametrize(
    "tree, cls, pattern",
    [
        ({"W": 1.5}, TypeError, r"at 'W': expected an array, or a dict, tuple or list of them, got float 1.5"),
        ((np.ones(2), Block()), TypeError, r"at '1': expected an array, .* got Block"),
        ({1: np.ones(2)}, TypeError, r"dict keys must be str, got 1 at '\(root\)'"),
        ({"a.b": np.ones(1), "a": {"b": np.ones(1)}}, ValueError, r"two leaves are both named 'a.b'"),
        ({"k": jax.random.key(0)}, TypeError, r"at 'k': cannot store PRNG keys; save jax.random.key_data"),
    ],
)
def test_unsupported_trees_are_refused(tmp_path, tree, cls, pattern):
    with pytest.raises(cls, match=r"^save\('.*'\): " + pattern):
        save(tmp_path / "m.safetensors", tree)


def test_params_like_reads_a_model_pair_and_passes_a_tree(key):
    from lamina._src.core.params import params_like

    model = lm.serial(lm.Dense(8, act="relu"), lm.LayerNorm(), lm.Dense(3, use_bias=False))
    def f32(*shape):
        return jax.ShapeDtypeStruct(shape, jnp.float32)

    expected = ({"W": f32(8, 5), "b": f32(8)}, {"scale": f32(8), "offset": f32(8)}, {"W": f32(3, 8)})
    got = params_like((model, (5,)))
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for want, leaf in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        assert isinstance(leaf, jax.ShapeDtypeStruct)
        assert (leaf.shape, leaf.dtype) == (want.shape, want.dtype)
    tree = ({"W": np.ones((2, 2))}, {"b": np.zeros(2)})  # a pair, but not (model, shape)
    assert params_like(tree) is tree


def like_errors(key):
    model = lm.serial(lm.Dense(4), lm.Dense(2))
    _, params = model.init(key, (3,))
    return model, params


def test_load_names_first_mismatch_with_like(tmp_path, key):
    model, params = like_errors(key)
    path = tmp_path / "model.safetensors"
    save(path, params)
    where = re.escape(f"load({str(path)!r}): ")
    transposed = (params[0], {"W": params[1]["W"].T, "b": params[1]["b"]})
    with pytest.raises(ValueError, match=where + r"at '1.W': expected shape \(4, 2\) float32 \(from like\), got shape \(2, 4\) float32"):
        load(path, like=transposed)
    as_bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    with pytest.raises(ValueError, match=where + r"at '0.W': expected shape \(4, 3\) bfloat16 \(from like\), got shape \(4, 3\) float32"):
        load(path, like=as_bf16)
    with pytest.raises(ValueError, match=where + r"missing tensor '2.W': expected shape \(2, 2\) float32; the file holds \['0.W', '0.b', '1.W', '1.b'\]"):
        load(path, like=(lm.serial(lm.Dense(4), lm.Dense(2), lm.Dense(2)), (3,)))
    with pytest.raises(ValueError, match=where + r"unexpected tensor '1.W': it is not in like's tree"):
        load(path, like=(params[0], {"b": params[1]["b"]}))
    with pytest.raises(ValueError, match=where + r"at '0.W': expected shape \(4, 5\)"):
        load(path, like=(model, (5,)))


def test_atomic_save_survives_a_full_disk_midway(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    save(path, {"W": np.zeros((64, 64), np.float32)})
    before = path.read_bytes()
    real_write = os.write
    calls = []

    def write_half_then_fail(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", write_half_then_fail)
    with pytest.raises(OSError) as info:
        save(path, {"W": np.ones((64, 64), np.float32)})
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC and len(calls) == 2  # it did write part of it
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"]
    np.testing.assert_array_equal(load(path)["W"], np.zeros((64, 64), np.float32))


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_atomic_save_survives_failing_fsync_or_rename(tmp_path, monkeypatch, failing):
    path = tmp_path / "model.safetensors"
    save(path, {"W": np.zeros(3, np.float32)})
    before = path.read_bytes()

    def fail(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(OSError, match="No space left"):
        save(path, {"W": np.ones(3, np.float32)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="I/O error"):
        save(tmp_path / "model.safetensors", {"W": np.ones(3, np.float32)})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_save_syncs_file_and_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_mode), real_fsync(fd))[1])
    save(tmp_path / "model.safetensors", {"W": np.ones(3, np.float32)})
    assert [stat.S_ISREG(m) for m in synced[:1]] == [True]
    if os.name == "posix":
        assert stat.S_ISDIR(synced[-1])
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_save_into_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"the folder '.*nowhere' does not exist"):
        save(tmp_path / "nowhere" / "m.safetensors", {"W": np.ones(1, np.float32)})


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "absent.safetensors"))):
        load(tmp_path / "absent.safetensors")


@pytest.fixture
def good_bytes(tmp_path):
    path = tmp_path / "good.safetensors"
    save(path, {"W": np.arange(12, dtype=np.float32).reshape(3, 4)})
    return path.read_bytes()


@pytest.mark.parametrize(
    "cut, pattern",
    [
        (lambda d: d[:-5], r"truncated safetensors file: its tensors need 48 bytes of data, but only 43 bytes follow the header"),
        (lambda d: d[:40], r"truncated safetensors file: the header says it is \d+ bytes long, but only 32 bytes follow"),
        (lambda d: d[:5], r"not a safetensors file: it is 5 bytes long, too short for a safetensors header"),
        (lambda d: b"", r"not a safetensors file: it is 0 bytes long"),
        (lambda d: b"W,b\n1.0,2.0\n" * 3, r"not a safetensors file: it starts with b'W,b\\n1.0,2.0\\nW,b"),
        (lambda d: d[:8] + b"{" + b"x" * (len(d) - 9), r"corrupted safetensors header: Expecting property name"),
        (lambda d: d + b"\x00" * 7, r"corrupted safetensors file \(.*"),
    ],
)
def test_damaged_files_are_named_and_explained(tmp_path, good_bytes, cut, pattern):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(cut(good_bytes))
    with pytest.raises(ValueError, match=re.escape(f"load({str(path)!r}): ") + pattern):
        load(path)


def test_corrupted_lamina_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    tensors = {"a": np.ones(1, np.float32)}
    meta = {"lamina.format": "1", "lamina.version": "0.1.0"}
    safetensors.numpy.save_file(tensors, path, metadata={**meta, "lamina.tree": '{"tensor": "b"}'})
    with pytest.raises(ValueError, match=r"corrupted lamina metadata: the tree names tensor 'b', which the file lacks"):
        load(path)
    safetensors.numpy.save_file(tensors, path, metadata={**meta, "lamina.tree": "{not json"})
    with pytest.raises(ValueError, match=r"corrupted lamina metadata: lamina.tree is not JSON"):
        load(path)
    safetensors.numpy.save_file(tensors, path, metadata={**meta, "lamina.tree": '{"set": []}'})
    with pytest.raises(ValueError, match=r"corrupted lamina metadata: unknown tree node 'set'"):
        load(path)
    safetensors.numpy.save_file(tensors, path, metadata={**meta, "lamina.tree": '{"tuple": []}'})
    with pytest.raises(ValueError, match=r"corrupted lamina metadata: tensor 'a' is not in the recorded tree"):
        load(path)
    safetensors.numpy.save_file(tensors, path, metadata={**meta, "lamina.format": "2", "lamina.tree": "{}"})
    with pytest.raises(ValueError, match=r"written in lamina checkpoint format '2' by lamina 0.1.0; this lamina reads format '1'. Upgrade lamina."):
        load(path)


class Exploit:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.safetensors"
    with open(path, "wb") as f:
        pickle.dump({"W": Exploit(str(marker))}, f)
    with pytest.raises(ValueError, match=re.escape(f"load({str(path)!r}): ") + r"this is a Python pickle .* lamina never unpickles files"):
        load(path)
    assert not marker.exists()


def test_torch_save_files_are_refused(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    zipped, legacy = tmp_path / "model.pt", tmp_path / "legacy.pt"
    torch.save({"W": torch.ones(2), "x": Exploit(str(marker))}, zipped)
    torch.save({"W": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match=r"model.pt'\): this is a zip archive \(torch.save writes these, with pickles inside\)"):
        load(zipped)
    with pytest.raises(ValueError, match=r"legacy.pt'\): this is a Python pickle"):
        load(legacy)
    assert not marker.exists()
