"""Constructor arguments read from each mechanism's signature and docstring (``attnzoo info``)."""

from __future__ import annotations

import inspect

import pytest

import attnzoo
from attnzoo.cli import main
from attnzoo.docs import _documented, constructor_arguments


@pytest.mark.parametrize("name", attnzoo.list_mechanisms())
def test_every_constructor_argument_is_documented(name: str) -> None:
    cls = attnzoo.mechanism_class(name)
    params = [
        p
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    args = constructor_arguments(name)
    assert [a.name for a in args] == [p.name for p in params]
    undocumented = [a.name for a in args if not a.doc]
    assert not undocumented, f"{name}: constructor arguments without a line in Args: {undocumented}"
    for a, p in zip(args, params):
        assert a.default is p.default and a.required == (p.default is p.empty)


def test_args_section_parsing() -> None:
    doc = """Title.

    Args:
        dim: channels C of ``x (B, N, C)``.
        num_heads: heads h; must divide
            ``dim``.
        gamma, b: parameters of the rule.
        q / k: two names.

    Returns:
        not an argument: ignored.
    """
    found = _documented(doc)
    assert found == {
        "dim": "channels C of ``x (B, N, C)``.",
        "num_heads": "heads h; must divide ``dim``.",
        "gamma": "parameters of the rule.",
        "b": "parameters of the rule.",
        "q": "two names.",
        "k": "two names.",
    }
    assert _documented("No sections here.") == {}


def test_inherited_documentation_is_found() -> None:
    # agent_attention_pvt documents nothing itself: its arguments come from AgentAttention's docstring
    args = {a.name: a for a in constructor_arguments("agent_attention_pvt")}
    assert args["agent_num"].doc and args["sr_ratio"].doc


def test_info_lists_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "mhsa"]) == 0
    out = capsys.readouterr().out
    assert "arguments       attnzoo.create('mhsa', ...):" in out
    assert "    dim: int (required) - channels C of ``x (B, N, C)``." in out
    assert "    causal: bool (default False) - mask future tokens." in out
