import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, settings


def pytest_configure(config):
    """The test run's environment, set before any test module is imported (none imports crfcore before this)."""
    # crfcore's CUDA backend is tested in Numba's CUDA simulator where no GPU is present (CI), on the GPU where one
    # is: the switch must be set before numba.cuda is first imported (CRFCORE_TEST_CUDA=gpu or =sim forces either)
    mode = os.environ.get("CRFCORE_TEST_CUDA") or ("gpu" if os.path.exists("/dev/nvidiactl") else "sim")
    if mode == "sim":
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    # Every call from the compiled kernels (and subprocesses inherit it): which one NumPy would serve while a cold
    # cache compiles depends on timing (crfcore.warmup); tests/test_warmup.py tests that tier on its own.
    os.environ["CRFCORE_FIRST_CALL"] = "compile"
    # torch.compile's on-disk cache does not see a custom op's fake implementation change: one cache per run
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="crfcore-inductor-"))
    # the receipt pipeline's cached synthetic start model: never the user's cache, and empty at the start of a run
    os.environ["CRFCORE_CACHE"] = tempfile.mkdtemp(prefix="crfcore-cache-")


settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
