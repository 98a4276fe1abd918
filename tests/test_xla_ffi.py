"""crfcore.adapters._xla_ffi: Python handlers that XLA calls with its buffers in place (on the CPU here), and the JAX
adapter's GPU handlers on device arrays (Numba's CUDA simulator without a GPU)."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402

from crfcore.adapters import _xla_ffi  # noqa: E402


def _scale(frame):
    x, factor = frame.inputs
    (out,) = frame.outputs
    assert frame.platform == "cpu"
    if factor[0] < 0:
        raise ValueError(f"factor {factor[0]} < 0")
    np.multiply(x, factor[0], out=out)


_xla_ffi.register("crfcore_test_scale", _scale)
_xla_ffi.register("crfcore_test_scale", _scale)  # a second registration is a no-op


def scale(x, factor):
    out = jax.ShapeDtypeStruct(x.shape, x.dtype)
    return jax.ffi.ffi_call("crfcore_test_scale", out, vmap_method="sequential")(x, jnp.reshape(factor, (1,)))


def test_buffers_in_place_under_jit_and_vmap():
    x = jnp.arange(12.0, dtype=jnp.float32).reshape(3, 4)
    f = jnp.float32(2.5)
    np.testing.assert_array_equal(scale(x, f), np.asarray(x) * 2.5)
    np.testing.assert_array_equal(jax.jit(scale)(x + 1, f), (np.asarray(x) + 1) * 2.5)
    np.testing.assert_array_equal(jax.vmap(scale, in_axes=(0, None))(x, f), np.asarray(x) * 2.5)
    xi = jnp.arange(5, dtype=jnp.int32)
    np.testing.assert_array_equal(scale(xi, jnp.int32(3)), np.arange(5) * 3)


def test_a_handlers_error_is_an_xla_error_with_its_message():
    x = jnp.ones((2, 2), jnp.float32)
    with pytest.raises(Exception, match=r"INVALID_ARGUMENT: ValueError: factor -1.0 < 0"):
        jax.block_until_ready(jax.jit(scale)(x, jnp.float32(-1.0)))
    with pytest.raises(Exception, match="XLA buffer of type .* which it does not take"):
        jax.block_until_ready(scale(jnp.ones(3, jnp.bfloat16), jnp.bfloat16(1.0)))
    np.testing.assert_array_equal(scale(x, jnp.float32(2.0)), 2 * np.ones((2, 2)))  # and the next call works


@pytest.mark.parametrize("features", [True, False])
def test_the_jax_adapters_gpu_handlers_equal_its_host_ones(rng, features):
    """The FFI handlers' CUDA side (parameters read back, crfcore's CUDA backend on the buffers, results, handle and
    gradients written into XLA's outputs) against the host side, on device arrays standing for XLA's buffers: in
    Numba's CUDA simulator without a GPU. XLA's own pointers and stream are what only a GPU run checks."""
    pytest.importorskip("numba_cuda", reason="needs crfcore[cuda]")
    from crfcore.adapters import jax as adapter
    from crfcore._cuda import device as dev

    logits = rng.normal(size=(1, 4, 5, 3))
    image = rng.uniform(0, 255, size=(1, 4, 5, 3))
    n_lab = logits.shape[-1]
    args = [logits, image, np.float64(3.0), rng.uniform(0.5, 2, (n_lab, n_lab)), rng.uniform(0, 1, (n_lab, n_lab)),
            np.float64(5.37), np.float64(41.3), np.float64(1.73)]
    static = (2, "symmetric", 2)
    on_dev = [dev.to_device(a) for a in args]
    out, handle = dev.empty(logits.shape, np.float64), dev.empty(1, np.int32)
    adapter._ffi_forward(static, True, _xla_ffi.Frame("cuda", on_dev, [out, handle]))
    ref, ref_handle = adapter._host_forward(static, False, *args)
    np.testing.assert_allclose(dev.to_host(out), ref, rtol=1e-12, atol=1e-12)
    h = int(dev.to_host(handle)[0])
    assert h > 0
    g = rng.normal(size=logits.shape)
    expected = adapter._host_backward(static, features, np.int32(0), g, *args)
    for given in (handle, dev.to_device(np.zeros(1, np.int32))):  # the stored residuals, then recomputed ones
        outs = [dev.empty(np.shape(a), np.float64) for a in args]
        adapter._ffi_backward(static, features, _xla_ffi.Frame("cuda", [given, dev.to_device(g), *on_dev], outs))
        for got, want in zip(outs, expected):
            np.testing.assert_allclose(dev.to_host(got), want, rtol=1e-10, atol=1e-10 * (np.abs(want).max() + 1))
    assert adapter._STORE.pop(h) is None  # the backward took the residuals
