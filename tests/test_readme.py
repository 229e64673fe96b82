"""The README's quickstart runs as written, and its commands are the ones CI runs."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def python_blocks():
    """README's python snippets; the long sections live in docs/ (tests/test_docs.py runs those)."""
    return re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.mark.slow
def test_quickstart_runs(capsys):
    blocks = python_blocks()
    assert len(blocks) >= 1, "README lost its quickstart"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "(10,) (256, 784)" in out
    assert "serial[1] Dense(10) (10,) (10,)" in out


def test_readme_links_into_the_docs():
    for target in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / target).is_file(), f"README links to {target}, which does not exist"
    assert "pip install -e '.[docs]' && mkdocs serve" in README


def test_commands_match_ci():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    assert len(commands) == 2
    main_job, tests = commands
    assert main_job.endswith('pip install -e ".[examples]" && python examples/train_digits.py')
    assert tests.endswith('pip install -e ".[test]" && python -m pytest')
    ci = (ROOT / ".ci" / "run").read_text()
    # The test extra holds the docs tools, so the README's command runs the docs tests too.
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
