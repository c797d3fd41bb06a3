import gc

# Imported before the first gc.freeze(): its entry points (trio's register_random) look
# for referrers with gc.get_referrers, which does not see frozen objects.
import hypothesis  # noqa: F401
import pytest


@pytest.fixture(autouse=True, scope="module")
def _collect_everything_after_each_module():
    """Collect all garbage at the end of a module, objects of its fixtures included."""
    yield
    gc.unfreeze()
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test():
    """Collect garbage after every test, so that a leaked socket is blamed on its test.

    Everything still reachable afterwards is frozen (:func:`gc.freeze`), so the next
    test's collection scans only what that test allocated: a full collection of a heap
    holding grpc, hypothesis and the library costs about 90 ms, 70 s over the suite.
    """
    yield
    gc.collect()
    gc.freeze()
