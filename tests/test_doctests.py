"""The examples in every docstring of the package run and print what they say.

Every module under memel_lightning is collected (walk_packages), so a new module's
examples run without editing this list; modules that cannot be imported here (an
optional dependency missing) are reported as skipped, not silently ignored."""
import doctest
import importlib
import pkgutil

import pytest

import memel_lightning


def all_modules() -> list[str]:
    names = [memel_lightning.__name__]
    for info in pkgutil.walk_packages(memel_lightning.__path__, prefix="memel_lightning."):
        if info.name.rsplit(".", 1)[-1] != "__main__":
            names.append(info.name)
    return sorted(names)


MODULES = all_modules()


def test_the_walk_finds_the_core_and_the_callback():
    assert {"memel_lightning.inhibition.memel", "memel_lightning.inhibition.attach", "memel_lightning.callback"} <= set(
        MODULES
    )


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ImportError as error:  # an optional dependency of a domain module
        pytest.skip(f"{name} cannot be imported here: {error}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
