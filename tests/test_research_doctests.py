"""The examples in the research package's docstrings run and print what they say."""
import doctest
import importlib
import pkgutil

import pytest

import memel_lightning.research as research

MODULES = [research.__name__] + [f"{research.__name__}.{m.name}" for m in pkgutil.iter_modules(research.__path__)]


def test_every_module_is_listed():
    assert len(MODULES) == 10  # the package and its nine modules


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    assert module.__doc__ and "Example" in module.__doc__, f"{name} has no example in its docstring"
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
