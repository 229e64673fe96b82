"""A causal character-level transformer, trained on Python's reference manual.

The text is the one `help("if")` and friends show: the pages of the Python
Language Reference and Library that ship inside every Python installation as
the standard library's `pydoc_data.topics` module (about 465 KB of English
prose with some grammar rules and code, in Python 3.11; a little different
in other versions). Nothing is downloaded. Its topics, joined in sorted
order, are cut into the first 90% for training and the last 10% for a
held-out loss.

The model reads a window of T characters and predicts, at every position,
the character that follows: an `lm.Embedding`, learned positions
(`lm.PositionEmbedding`), two causal `lm.TransformerEncoderLayer`s, a final
`lm.LayerNorm` and an `lm.Dense` to the vocabulary. Adam trains it on random
windows with `lm.train_step`. At the end it prints the mean train loss of the
first and last steps, the held-out loss, and text sampled from a short
prompt, one character at a time with a key-value cache (`lm.decode_step`).

    python examples/char_transformer.py [--steps 600] [--quick] [--no-progress]
"""

import argparse
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lamina as lm


def load_text():
    """The Python reference pages as one string, in an order fixed by topic name."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def build(vocab_size, features, num_heads, window, num_layers=2):
    blocks = [lm.TransformerEncoderLayer(num_heads, 4 * features, causal=True)
              for _ in range(num_layers)]
    # Learned positions: attention alone ignores order.
    return lm.serial(lm.Embedding(vocab_size, features), lm.PositionEmbedding(max_length=window),
                     *blocks, lm.LayerNorm(), lm.Dense(vocab_size))


def windows(ids, starts, length):
    """Inputs `ids[s : s+length]` and next-character targets `ids[s+1 : s+length+1]`."""
    idx = np.asarray(starts)[:, None] + np.arange(length + 1)
    chunk = ids[idx]
    return chunk[:, :-1], chunk[:, 1:]


@functools.partial(jax.jit, static_argnums=(0, 1))
def held_out(model, loss_fn, params, xs, ys):
    """Mean loss and next-character accuracy over windows `xs`, `ys` of shape `(N, T)`."""
    logits = lm.forward(model)(params, xs)
    return {"loss": jnp.mean(loss_fn(logits, ys)),
            "accuracy": jnp.mean(jnp.argmax(logits, axis=-1) == ys)}


@functools.partial(jax.jit, static_argnums=0)
def _next_id(model, params, cache, last, temperature, key):
    """The character after `last`, drawn from the model's logits; the cache grows by one."""
    logits, cache = lm.decode_step(model, params, cache, last)
    drawn = jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6))
    return jnp.where(temperature > 0, drawn, jnp.argmax(logits)), cache


def sample(model, params, prompt, encode, vocab, *, length, window, temperature, key):
    """`prompt` and `length` characters drawn one at a time from the model.

    A key-value cache keeps every position's keys and values, so each new
    character costs one position, not a rerun of the window. The learned
    positions end at `window`: when the cache is full, a new one starts from
    the last half of the text so far. `temperature` 0 takes the likeliest
    character (greedy).
    """
    ids = list(encode(prompt))
    cache = None
    for _ in range(length):
        if cache is None or int(cache["position"]) == window:
            context = ids[-window // 2:] if cache is not None else ids[-window:]
            cache = lm.init_cache(model, params, window)
            for i in context[:-1]:  # the context's keys and values, its draws unused
                _, cache = _next_id(model, params, cache, jnp.int32(i), 0.0, key)
        key, draw_key = jax.random.split(key)
        next_id, cache = _next_id(model, params, cache, jnp.int32(ids[-1]), temperature, draw_key)
        ids.append(int(next_id))
    return "".join(vocab[i] for i in ids)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--window", type=int, default=64, help="characters per training window (T)")
    parser.add_argument("--features", type=int, default=64, help="model width (D)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default="The ")
    parser.add_argument("--sample-length", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.7, help="0 for greedy sampling")
    parser.add_argument("--quick", action="store_true", help="a tiny model for 50 steps, for smoke tests")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        # New defaults, so flags given beside --quick still win.
        parser.set_defaults(steps=50, batch_size=16, window=32, features=32, heads=2, lr=3e-3,
                            sample_length=40)
        args = parser.parse_args(argv)

    text = load_text()
    vocab = "".join(sorted(set(text)))
    lookup = {c: i for i, c in enumerate(vocab)}

    def encode(s):
        return np.array([lookup[c] for c in s], np.int32)

    ids = encode(text)
    unknown = sorted(set(args.prompt) - set(vocab))
    if unknown:
        parser.error(f"--prompt has characters the text never uses: {unknown}")
    split = int(0.9 * len(ids))
    train_ids, held_ids = ids[:split], ids[split:]
    print(f"text: Python's pydoc_data topics, {len(text):,} characters, vocabulary of "
          f"{len(vocab)}; {len(train_ids):,} for training, {len(held_ids):,} held out")

    T = args.window
    model = build(len(vocab), args.features, args.heads, T)
    init_key, sample_key = jax.random.split(jax.random.key(args.seed))
    # Run eagerly, each of init's random draws would compile on its own;
    # under one jit they compile together, seconds sooner.
    params = jax.jit(lambda key: model.init(key, (T,))[1])(init_key)
    n_params = sum(p.size for p in jax.tree.leaves(params))
    print(f"model: D={args.features}, {args.heads} heads, 2 causal blocks, T={T}: "
          f"{n_params:,} params")

    loss_fn = optax.softmax_cross_entropy_with_integer_labels
    optimizer = optax.adam(args.lr)
    step = lm.train_step(model, loss_fn, optimizer)
    opt_state = jax.jit(optimizer.init)(params)
    rng = np.random.default_rng(args.seed)

    start = time.perf_counter()
    losses = []
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=args.steps, unit="step")
    for i in range(args.steps):
        starts = rng.integers(0, len(train_ids) - T, size=args.batch_size)
        params, opt_state, metrics = step(params, opt_state, windows(train_ids, starts, T))
        losses.append(metrics["loss"])
        if bar is not None:
            if i % 25 == 0 or i == args.steps - 1:
                # Reading the loss waits for the step, so only now and then.
                bar.set_postfix(loss=f"{float(metrics['loss']):.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    losses = np.asarray(jax.device_get(losses))
    seconds = time.perf_counter() - start

    # Held out: every non-overlapping window of the last 10%, so each of its
    # characters is predicted once, from up to T-1 characters before it.
    n = (len(held_ids) - 1) // T
    held_x, held_y = windows(held_ids, np.arange(n) * T, T)
    result = {k: float(v) for k, v in held_out(model, loss_fn, params, held_x, held_y).items()}

    k = max(1, min(50, args.steps // 5))
    first, final = float(losses[:k].mean()), float(losses[-k:].mean())
    print(f"train loss {first:.3f} (mean of the first {k} steps) -> {final:.3f} (last {k}) "
          f"in {args.steps} steps, {seconds:.1f} s with compiling; uniform guess {math.log(len(vocab)):.3f}")
    print(f"held-out loss {result['loss']:.3f} ({result['loss'] / math.log(2):.2f} bits per "
          f"character), next-character accuracy {result['accuracy']:.1%}")

    line = sample(model, params, args.prompt, encode, vocab, length=args.sample_length,
                  window=T, temperature=args.temperature, key=sample_key)
    print(f"sample (temperature {args.temperature}, seed {args.seed}):\n{line}")
    return {"first_loss": first, "final_loss": final, "eval_loss": result["loss"],
            "eval_accuracy": result["accuracy"], "sample": line, "vocab": vocab,
            "window": T, "seconds": seconds, "model": model, "params": params}


if __name__ == "__main__":
    main()
