"""Steps 1-5 of the lesson: scalars, vectors, matrices, tensors and matrix algebra.

Everything a neural network computes is built from these few operations on
arrays. Run it and read the output from top to bottom:

    python examples/tensors_and_matrix_algebra.py
"""

import jax.numpy as jnp


def show(title, value):
    print(f"{title}:\n{value}\n")


def main():
    # 1. A scalar is one number: a learning rate, a weight, a bias.
    x = jnp.float32(5.0)
    show("scalar x (shape (), ndim 0)", x)

    # 2. A vector is a 1-D array; each value is found by one index.
    v = jnp.array([1.0, 2.0, 3.0])
    show(f"vector v, shape {v.shape}; v[0] = {v[0]}", v)

    # 3. A matrix is a 2-D grid: A[row, column].
    A = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    show(f"matrix A, shape {A.shape}; A[1, 2] = {A[1, 2]}", A)

    # 4. A tensor is the general n-dimensional array: here 2 images of 2x3 pixels.
    T = jnp.arange(12.0).reshape(2, 2, 3)
    show(f"tensor T, shape {T.shape}, ndim {T.ndim}; T[1, 0, 2] = {T[1, 0, 2]}", T)

    # 5. Matrix algebra.
    B = jnp.ones((3, 3))
    show("element-wise addition A + B (shapes must match)", A + B)
    show("scalar multiplication 2 * A (every entry doubled)", 2 * A)

    # Matrix multiplication: (m, k) @ (k, n) -> (m, n). Inner dimensions must
    # agree, because each output entry is a row of the left times a column of
    # the right, summed.
    M = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # (3, 2)
    P = A @ M
    show(f"matrix product A @ M: (3, 3) @ (3, 2) -> {P.shape}", P)
    by_hand = sum(A[0, k] * M[k, 1] for k in range(3))
    print(f"entry [0, 1] by hand: row 0 of A . column 1 of M = "
          f"1*2 + 2*4 + 3*6 = {by_hand}  (matches {P[0, 1]})\n")
    assert by_hand == P[0, 1]
    try:
        M @ A  # (3, 2) @ (3, 3): the inner dimensions 2 and 3 differ.
    except TypeError as error:
        print(f"M @ A fails, inner dimensions 2 != 3:\n  {error}\n")

    # Transpose swaps rows and columns: (3, 2) -> (2, 3).
    show(f"transpose M.T, shape {M.T.shape}", M.T)

    # The weighted sum of a dense layer is exactly this algebra:
    # inputs (3,) times W.T where W is (out=2, in=3), plus a bias (2,).
    W = jnp.array([[0.2, -0.5, 1.0], [0.7, 0.1, -0.3]])
    b = jnp.array([0.1, -0.2])
    show("weighted sum v @ W.T + b for W of shape (2, 3)", v @ W.T + b)


if __name__ == "__main__":
    main()
