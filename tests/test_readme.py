"""The README's quickstart runs as written, and its commands are the ones CI runs."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def python_blocks(needs_mesh):
    """README's python snippets; those building a Mesh need 8 devices (tests/multidevice)."""
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    return [b for b in blocks if ("Mesh(" in b) == needs_mesh]


def test_quickstart_runs(capsys):
    blocks = python_blocks(needs_mesh=False)
    assert len(blocks) >= 2, "README lost its quickstart or training snippet"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "(10,) (256, 784)" in out
    assert "serial[1] Dense(10) (10,) (10,)" in out
    assert "147 275" in out and "(7, 3)" in out
    assert "True serial(Dense(16, act='relu'), Dense(3))" in out
    assert "\n22\n" in out  # num_batches_tracked after the state section
    assert "serial(Dense(256, act='relu'), Dense(10))" in out and "Dense(20) Dense(3, act='tanh')" in out
    assert "PyFloat fails check_layer's 'retrace' check" in out
    assert "stream loss" in out and "loop loss" in out  # streaming, resume and a hand-written loop
    accuracy = float(re.search(r"accuracy (\S+)", out).group(1))
    assert accuracy >= 0.95


def test_commands_match_ci():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    assert len(commands) == 2
    main_job, tests = commands
    assert main_job.endswith('pip install -e ".[examples]" && python examples/train_digits.py')
    assert tests.endswith('pip install -e ".[test]" && python -m pytest')
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install --quiet -e ".[test]"' in ci
    assert ci.rstrip().endswith("python -m pytest")


def test_error_example_is_what_lamina_says():
    import jax
    import jax.numpy as jnp
    import pytest

    import lamina as lm

    model = lm.serial(lm.Dense(256, act="relu"), lm.Dense(10))
    _, params = model.init(jax.random.key(0), (784,))
    with pytest.raises(ValueError) as info:
        model.apply(params, jnp.ones(783))
    shown = re.search(r"```text\nValueError: (.*?)```", README, re.S).group(1)
    # The README wraps the message for reading; compare the words.
    assert " ".join(shown.split()) == " ".join(str(info.value).split())
