import gc

import pytest


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test():
    """Collect garbage after every test, so that a leaked socket is blamed on its test."""
    yield
    gc.collect()
