"""fit on data from any iterable: generators, torch DataLoaders and grain loaders train as arrays do."""

import chex
import jax
import numpy as np
import optax
import pytest

import lamina as lm

xent = optax.softmax_cross_entropy_with_integer_labels
EPOCHS, BATCH = 3, 32


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype(np.float32)
    return train_test_split(images, labels.astype(np.int32), test_size=0.25, random_state=0,
                            stratify=labels)


def model_and_params():
    model = lm.serial(lm.Dense(256, act="relu"), lm.Dense(128, act="relu"), lm.Dense(10))
    return model, model.init(jax.random.key(0), (64,))[1]


def fit_orders(key, n, epochs):
    """The batches of indices fit cuts from in-memory arrays, epoch by epoch (its shuffle)."""
    orders = []
    for _ in range(epochs):
        key, shuffle_key, _ = jax.random.split(key, 3)
        order = np.asarray(jax.random.permutation(shuffle_key, n))
        orders.append([order[i : i + BATCH] for i in range(0, n, BATCH)])
    return orders


def train(data, digits, **kwargs):
    x_train, x_test, y_train, y_test = digits
    model, params = model_and_params()
    params, history = lm.fit(model, params, optax.adam(1e-3), data, loss_fn=xent,
                             key=jax.random.key(1), eval_data=(x_test, y_test), progress=False,
                             **kwargs)
    return params, history["eval_accuracy"][-1]


@pytest.fixture(scope="module")
def from_arrays(digits):
    x_train, _, y_train, _ = digits
    return train((x_train, y_train), digits, epochs=EPOCHS, batch_size=BATCH)


def same_as_arrays(result, from_arrays):
    params, accuracy = result
    assert accuracy == from_arrays[1] > 0.9
    # Same batches in the same order through the same step: the same weights.
    chex.assert_trees_all_close(params, from_arrays[0], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_generator_trains_as_arrays(digits, from_arrays):
    x_train, _, y_train, _ = digits
    batches = [b for epoch in fit_orders(jax.random.key(1), len(x_train), EPOCHS) for b in epoch]

    def generate():  # one pass; every epoch's last batch is short (1347 = 42 * 32 + 3)
        for idx in batches:
            yield x_train[idx], y_train[idx]

    same_as_arrays(train(generate(), digits, epochs=1), from_arrays)


def test_torch_dataloader_trains_as_arrays(digits, from_arrays):
    torch = pytest.importorskip("torch")
    x_train, _, y_train, _ = digits
    orders = iter(fit_orders(jax.random.key(1), len(x_train), EPOCHS))

    class EpochBatches:  # a batch sampler giving each epoch the order fit would use
        def __iter__(self):
            return iter([idx.tolist() for idx in next(orders)])

    dataset = torch.utils.data.TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=EpochBatches())
    same_as_arrays(train(loader, digits, epochs=EPOCHS), from_arrays)


def test_grain_loader_trains_as_arrays(digits, from_arrays):
    grain = pytest.importorskip("grain")
    x_train, _, y_train, _ = digits
    batches = [b for epoch in fit_orders(jax.random.key(1), len(x_train), EPOCHS) for b in epoch]

    class Batches:  # a grain data source whose records are fit's batches, in order
        def __len__(self):
            return len(batches)

        def __getitem__(self, i):
            return x_train[batches[i]], y_train[batches[i]]

    loader = grain.DataLoader(
        data_source=Batches(),
        sampler=grain.samplers.IndexSampler(len(batches), shuffle=False, num_epochs=1,
                                            shard_options=grain.sharding.NoSharding()),
        worker_count=0,
    )
    same_as_arrays(train(loader, digits, epochs=1), from_arrays)


def test_steps_bounds_an_endless_stream():
    def endless():
        rng = np.random.default_rng(0)
        while True:
            xs = rng.normal(size=(8, 3)).astype(np.float32)
            yield xs, (xs[:, 0] > 0).astype(np.int32)

    model = lm.mlp([2])
    _, params = model.init(jax.random.key(0), (3,))
    params, history = lm.fit(model, params, optax.sgd(0.1), endless(), loss_fn=xent, steps=25,
                             key=jax.random.key(0), progress=False)
    assert len(history["train_loss"]) == 1  # the one, partial, pass


def test_a_list_of_two_batches_is_two_batches_not_one_pair():
    # list(a torch DataLoader) of two batches holds [xs, ys] lists: not (inputs, targets).
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(16, 3)).astype(np.float32)
    ys = (xs[:, 0] > 0).astype(np.int32)
    model = lm.mlp([2])
    _, params = model.init(jax.random.key(0), (3,))
    batches = [[xs[:8], ys[:8]], [xs[8:], ys[8:]]]
    as_list, _ = lm.fit(model, params, optax.sgd(0.1), batches, loss_fn=xent, epochs=1,
                        key=jax.random.key(0), progress=False)
    as_tuples, _ = lm.fit(model, params, optax.sgd(0.1), [tuple(b) for b in batches],
                          loss_fn=xent, epochs=1, key=jax.random.key(0), progress=False)
    chex.assert_trees_all_equal(as_list, as_tuples)


def test_ragged_batches_compile_once():
    traces = []
    base = lm.Dense(2)

    def apply(params, x, *, key=None):
        traces.append(1)  # runs only while JAX traces
        return base.apply(params, x)

    def run(sizes, epochs):
        traces.clear()
        model = lm.Layer(base.init, apply, f"Counted{sizes}{epochs}")  # nothing compiled to reuse
        _, params = model.init(jax.random.key(0), (3,))
        batches = [(np.ones((n, 3), np.float32), np.zeros(n, np.int32)) for n in sizes]
        lm.fit(model, params, optax.sgd(0.1), batches, loss_fn=xent, epochs=epochs,
               key=jax.random.key(0), progress=False)
        return len(traces)

    assert run((4, 4), 1) == run((4, 4, 1, 4, 3), 3)


def test_padding_is_masked_out_of_an_iterable():
    # SGD on w over batches (1, 2) then (3,): the second step sees only example 3.
    model = lm.Dense(1, use_bias=False)
    params = {"W": np.zeros((1, 1), np.float32)}
    xs = np.array([[1.0], [2.0], [3.0]], np.float32)
    batches = [(xs[:2], 2 * xs[:2]), (xs[2:], 2 * xs[2:])]
    new, _ = lm.fit(model, params, optax.sgd(0.01), batches, loss_fn=optax.squared_error,
                    epochs=1, key=jax.random.key(0), progress=False)
    w = 0.0
    for x in (xs[:2, 0], xs[2:, 0]):
        w -= 0.01 * np.mean(2 * (w * x - 2 * x) * x)
    np.testing.assert_allclose(float(new["W"][0, 0]), w, rtol=1e-6)


def test_progress_shows_examples_per_second(capsys):
    model = lm.mlp([3])
    _, params = model.init(jax.random.key(0), (2,))
    batches = [(np.ones((4, 2), np.float32), np.zeros(4, np.int32))] * 3
    lm.fit(model, params, optax.sgd(0.1), batches, loss_fn=xent, epochs=2,
           key=jax.random.key(0), progress=True)
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "step=3/3" in err and "loss=" in err and "ex/s=" in err


def _gen(batches):
    yield from batches


@pytest.mark.parametrize(
    "data, kwargs, error, pattern",
    [
        (lambda b: _gen(b), {"epochs": 2}, ValueError,
         r"fit: train_data is a one-pass iterator \(generator\), so epochs=2 cannot be done"),
        (lambda b: [], {"epochs": 1}, ValueError, r"fit: train_data yielded no batches"),
        (lambda b: 5, {"epochs": 1}, TypeError,
         r"fit: train_data must be \(inputs, targets\) arrays or an iterable of \(inputs, targets\) batches, got int"),
        (lambda b: [b[0], (np.ones((4, 5), np.float32), np.zeros(4, np.int32))], {"epochs": 1}, ValueError,
         r"fit: train_data batch 1: examples of shape \(5,\) with targets \(\), but the first batch had \(2,\)"),
        (lambda b: [b[0], (np.ones((9, 2), np.float32), np.zeros(9, np.int32))], {"epochs": 1}, ValueError,
         r"fit: train_data batch 1: has 9 examples, more than the batch size 4"),
        (lambda b: [b[0], (np.ones((4, 2), np.float32), np.full(4, 7))], {"epochs": 1}, ValueError,
         r"fit: train_data batch 1: targets must be class indices in \[0, 3\)"),
        (lambda b: [b[0], np.ones((4, 2))], {"epochs": 1}, TypeError,
         r"fit: train_data batch 1: batch must be an \(inputs, targets\) pair"),
        (lambda b: b, {}, TypeError, r"fit: give epochs= \(passes over the data\), steps="),
        (lambda b: b, {"epochs": 1, "steps": 0}, ValueError, r"fit: steps must be an int >= 1, got 0"),
    ],
)
def test_fit_rejects_bad_iterables(data, kwargs, error, pattern):
    model = lm.mlp([3])
    _, params = model.init(jax.random.key(0), (2,))
    batches = [(np.ones((4, 2), np.float32), np.zeros(4, np.int32))] * 2
    with pytest.raises(error, match=pattern):
        lm.fit(model, params, optax.sgd(0.1), data(batches), loss_fn=xent,
               key=jax.random.key(0), progress=False, **kwargs)


def test_nan_loss_from_an_iterable_names_the_step_and_the_checkpoint(tmp_path):
    def batches():
        for i in range(20):
            xs = np.full((4, 2), 1e30 if i == 13 else 1.0, np.float32)
            yield xs, np.ones((4, 1), np.float32)

    model = lm.Dense(1)
    _, params = model.init(jax.random.key(0), (2,))
    with pytest.raises(FloatingPointError) as info:
        lm.fit(model, params, optax.sgd(0.01), batches(), loss_fn=optax.squared_error, epochs=1,
               key=jax.random.key(0), progress=False, checkpoint_dir=tmp_path, checkpoint_every=5)
    assert isinstance(info.value, lm.LaminaError)
    assert str(info.value).startswith("fit: the loss became inf at epoch 1/1, step 14. ")
    assert f"The latest checkpoint is step 10 in {str(tmp_path)!r}; fit(..., resume=True)" in str(info.value)
