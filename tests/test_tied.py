"""lm.tied: the output layer shares the token embedding's table; against NumPy, and its errors."""

import jax
import numpy as np
import pytest

import lamina as lm


def test_logits_are_the_hidden_vectors_times_the_table_transposed():
    model = lm.tied(lm.Embedding(7, 3), lm.Dense(3, act="tanh"))
    out_shape, params = model.init(jax.random.key(0), (4,))
    assert out_shape == (4, 7) and len(params) == 2
    ids = np.array([[0, 6, 2, 2], [1, 1, 5, 3]], np.int32)
    W, dense = np.asarray(params[0]["W"]), params[1]
    hidden = np.tanh(W[ids] @ np.asarray(dense["W"]).T + np.asarray(dense["b"]))
    np.testing.assert_allclose(np.asarray(lm.forward(model)(params, ids)), hidden @ W.T,
                               rtol=1e-5, atol=1e-6)
    assert lm.summary(model, (4,), input_dtype=np.int32, show=False).params == 7 * 3 + 3 * 3 + 3


def test_the_first_layer_must_be_an_embedding():
    with pytest.raises(TypeError, match=r"tied: the first layer must be an lm.Embedding, whose "
                                        r"table the output layer shares, got Dense\(3\)"):
        lm.tied(lm.Dense(3), lm.Dense(3))


def test_the_last_layer_must_give_the_embeddings_features():
    with pytest.raises(ValueError, match=r"the last layer gives vectors of shape \(4, 5\), but "
                                         r"the output layer shares the embedding's table and "
                                         r"takes vectors of its 3 features"):
        lm.tied(lm.Embedding(7, 3), lm.Dense(5)).init(jax.random.key(0), (4,))
