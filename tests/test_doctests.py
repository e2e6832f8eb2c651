"""The examples in the core's and callback's docstrings run and print what they say."""
import doctest
import importlib

import pytest

MODULES = [
    "memel_lightning.inhibition.moments",
    "memel_lightning.inhibition.scale",
    "memel_lightning.inhibition.selectors",
    "memel_lightning.inhibition.memel",
    "memel_lightning.callback",
    "memel_lightning.data.samplers",
    "memel_lightning.data.digits",
    "memel_lightning.models.digits",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
