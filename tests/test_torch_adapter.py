"""crfcore.adapters.torch: crf_refine as a torch custom op with the core's exact backward, and CrfRnn (crfasrnn_pytorch's
module, any batch size)."""

import gc
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import crfcore  # noqa: E402
from crfcore.adapters import torch as adapter  # noqa: E402
from crfcore.adapters.torch import CrfRnn, DenseCRFParams, crf_refine  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTHS = dict(theta_alpha=5.37, theta_beta=41.3, theta_gamma=1.73)  # off the pixel grid's simplex boundaries


def batch(rng, b=2, n_lab=3, shape=(9, 11), dtype=torch.float64):
    truth = rng.uniform(size=(b, *shape)) > 0.5
    logits = rng.normal(size=(b, n_lab, *shape)) + 2.0 * truth[:, None]
    image = rng.uniform(0, 255, size=(b, 3, *shape))
    return torch.tensor(logits, dtype=dtype), torch.tensor(image, dtype=dtype)


def core_logits(logits, image, **kw):
    z, _ = crfcore.meanfield_fwd(np.moveaxis(logits.detach().numpy(), 1, -1), np.moveaxis(image.numpy(), 1, -1),
                                 output="logits", spatial_dims=logits.dim() - 2, **kw)
    return np.moveaxis(z, -1, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(9, 11), (4, 5, 6)])
def test_equals_the_core(rng, dtype, shape):
    logits, image = batch(rng, shape=shape, dtype=dtype)
    out = crf_refine(logits, image, n_iter=3, spatial_dims=len(shape), **WIDTHS)
    assert out.dtype == dtype and out.shape == logits.shape
    np.testing.assert_allclose(out.numpy(), core_logits(logits, image, n_iter=3, **WIDTHS), rtol=1e-6, atol=1e-6)


def test_gradcheck_everything(rng):
    logits, image = batch(rng, b=2, shape=(6, 7))
    args = [logits.requires_grad_(), image.requires_grad_(),
            torch.tensor(WIDTHS["theta_alpha"], dtype=torch.float64, requires_grad=True),
            torch.tensor(WIDTHS["theta_beta"], dtype=torch.float64, requires_grad=True),
            torch.tensor(rng.normal(size=(3, 3)), requires_grad=True),
            torch.tensor(rng.normal(size=(3, 3)), requires_grad=True),
            torch.tensor(rng.normal(size=(3, 3)), requires_grad=True)]

    def f(lg, img, ta, tb, ws, wb, mu):
        return crf_refine(lg, img, n_iter=3, theta_alpha=ta, theta_beta=tb, theta_gamma=1.73, w_spatial=ws,
                          w_bilateral=wb, compat=mu, normalization="symmetric")

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_batch_of_four_equals_four_calls_and_3d(rng):
    logits, image = batch(rng, b=4, dtype=torch.float32)
    whole = crf_refine(logits, image, **WIDTHS)
    parts = torch.cat([crf_refine(logits[i:i + 1], image[i:i + 1], **WIDTHS) for i in range(4)])
    assert torch.equal(whole, parts)


def test_crfrnn_training_moves_only_the_crf(rng):
    torch.manual_seed(0)
    truth = torch.tensor(rng.uniform(size=(8, 12, 14)) > 0.6).long()
    image = truth[:, None].float().repeat(1, 3, 1, 1) * 150 + torch.tensor(rng.normal(0, 30, size=(8, 3, 12, 14)),
                                                                          dtype=torch.float32)
    features = torch.nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        features.weight.copy_(torch.tensor([[-1.0] * 3, [1.0] * 3]).reshape(2, 3, 1, 1) / 150)
        features.bias.copy_(torch.tensor([0.5, -0.5]))
    features.requires_grad_(False)
    crf = CrfRnn(2, num_iterations=3, theta_alpha=6.0, theta_beta=60.0, theta_gamma=2.0, trainable_widths=True)
    frozen = [p.clone() for p in features.parameters()]
    before = {k: v.detach().clone() for k, v in crf.named_parameters()}
    gc.collect()  # earlier tests' graphs (gradcheck's probes) release their residuals when collected
    stored = len(adapter._STORE)
    opt = torch.optim.Adam(crf.parameters(), lr=0.05)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(crf(image, features(image)), truth)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0]
    for name, value in crf.named_parameters():
        assert (value - before[name]).abs().max() > 1e-3, name
    for a, b in zip(frozen, features.parameters()):
        assert torch.equal(a, b)
    assert len(adapter._STORE) == stored  # every forward's residuals were taken by its backward
    with torch.no_grad():
        crf(image, features(image))
    assert len(adapter._STORE) == stored  # inference keeps nothing


def test_crfrnn_drop_in_and_state_dict(rng):
    params = DenseCRFParams(alpha=30.0, beta=20.0, gamma=2.0, spatial_ker_weight=2.0, bilateral_ker_weight=4.0)
    crf = CrfRnn(3, 4, params, theta_gamma=2.5)
    assert [n for n, _ in crf.named_parameters()] == ["spatial_ker_weights", "bilateral_ker_weights",
                                                     "compatibility_matrix"]
    assert crf.widths() == pytest.approx(dict(theta_alpha=30.0, theta_beta=20.0, theta_gamma=2.5))
    logits, image = batch(rng, b=3, dtype=torch.float32)
    out = crf(image, logits)  # crfasrnn_pytorch's argument order
    expected = core_logits(logits, image, n_iter=4, theta_alpha=30.0, theta_beta=20.0, theta_gamma=2.5,
                           w_spatial=2.0, w_bilateral=4.0, normalization="after")
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        crf.compatibility_matrix.add_(0.3)
    again = CrfRnn(3, 4)
    again.load_state_dict(crf.state_dict())
    assert again.widths() == pytest.approx(crf.widths())
    assert torch.equal(again(image, logits), crf(image, logits))


def test_torch_compile_matches_eager(rng):
    logits, image = batch(rng, b=2, dtype=torch.float32)
    crf = CrfRnn(3, 3, theta_alpha=6.0, theta_beta=40.0, theta_gamma=2.0, trainable_widths=True)
    eager = crf(image, logits)
    compiled = torch.compile(crf)
    out = compiled(image, logits)
    assert torch.allclose(out, eager, atol=1e-6)
    out.sum().backward()
    assert crf.log_theta_alpha.grad is not None and torch.isfinite(crf.compatibility_matrix.grad).all()


@pytest.mark.parametrize("name", ["logits", "image", "theta_alpha", "theta_beta", "theta_gamma", "w_bilateral",
                                  "w_spatial", "compat"])
def test_each_argument_alone_matches_finite_differences(rng, name):
    """Differentiated alone, every argument gets its exact gradient (gradcheck in float64)."""
    logits, image = batch(rng, b=1, shape=(6, 7))
    values = dict(logits=logits, image=image, theta_alpha=torch.tensor(7.37, dtype=torch.float64),
                  theta_beta=torch.tensor(41.3, dtype=torch.float64), theta_gamma=torch.tensor(1.73, dtype=torch.float64),
                  w_bilateral=torch.tensor(2.5, dtype=torch.float64),
                  w_spatial=torch.tensor(rng.normal(size=(3, 3))), compat=torch.tensor(rng.normal(size=(3, 3))))

    def f(x):
        kw = dict(values, **{name: x})
        lg, img = kw.pop("logits"), kw.pop("image")
        return torch.logsumexp(crf_refine(lg, img, n_iter=2, normalization="after", **kw), 1).mean()

    x = values[name].clone().requires_grad_()
    (g,) = torch.autograd.grad(f(x), x)
    assert g.abs().sum() > 1e-8, name
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_widths_per_axis_and_per_channel(rng):
    """Widths one per spatial axis (theta_alpha, theta_gamma) or per channel (theta_beta), as the core and the JAX
    adapter take them: the core's result, and gradients of their shape, exact (gradcheck)."""
    logits, image = batch(rng, b=2, shape=(6, 7))
    widths = dict(theta_alpha=(5.37, 7.1), theta_beta=(41.3, 30.7, 52.9), theta_gamma=(1.73, 2.41))
    for spatial in ((6, 7), (3, 4, 5)):
        lg, img = batch(rng, b=1, shape=spatial)
        kw = {k: v if k == "theta_beta" else (v + (3.3,))[:len(spatial)] for k, v in widths.items()}
        np.testing.assert_allclose(crf_refine(lg, img, n_iter=2, spatial_dims=len(spatial), **kw).numpy(),
                                   core_logits(lg, img, n_iter=2, **kw), rtol=1e-12, atol=1e-12)
    for name, value in widths.items():
        x = torch.tensor(value, dtype=torch.float64, requires_grad=True)

        def f(x):
            kw = dict(widths, **{name: x})
            return torch.logsumexp(crf_refine(logits, image, n_iter=2, normalization="after", **kw), 1).mean()

        (g,) = torch.autograd.grad(f(x), x)
        assert g.shape == x.shape and (g.abs() > 1e-8).all(), name
        assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match=r"`theta_beta` must be a number or one per channel \(3\), got shape \(2,\)"):
        crf_refine(logits, image, theta_beta=(13.0, 13.0))


def test_printing_a_module_with_trainable_widths_warns_nothing(recwarn):
    crf = CrfRnn(2, trainable_widths=True, theta_alpha=80.0)
    assert "theta_alpha=80, theta_beta=3, theta_gamma=3" in repr(crf) and "trainable_widths=True" in repr(crf)
    assert not recwarn.list, [str(w.message) for w in recwarn.list]


def _layouts(rng, b, n_lab, shape, dtype):
    """The same batch with the strides users produce: contiguous, a permuted channels-last NumPy array, and
    PyTorch's channels_last memory format."""
    logits, image = batch(rng, b=b, n_lab=n_lab, shape=shape, dtype=dtype)
    perm = (0, *range(2, logits.dim()), 1)
    back = (0, logits.dim() - 1, *range(1, logits.dim() - 1))
    from_numpy = [torch.tensor(np.ascontiguousarray(t.numpy().transpose(perm)).transpose(back)) for t in (logits,
                                                                                                           image)]
    fmt = torch.channels_last if logits.dim() == 4 else torch.channels_last_3d
    return {"contiguous": (logits, image), "numpy channels last": tuple(from_numpy),
            "channels_last": tuple(t.contiguous(memory_format=fmt) for t in (logits, image))}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b", [1, 2])
@pytest.mark.parametrize("shape", [(6, 7), (3, 4, 5)])
def test_fake_and_real_ops_agree_for_every_layout(rng, dtype, b, shape):
    """torch.library.opcheck compares the fake (meta) implementations with the real ops, strides included: they
    once differed for inputs that were not contiguous (torch.compile failed with 'incorrect fake kernel')."""
    for name, (logits, image) in _layouts(rng, b, 3, shape, dtype).items():
        ws, wb, mu = 3.0 * torch.eye(3, dtype=dtype), 10.0 * torch.eye(3, dtype=dtype), 1 - torch.eye(3, dtype=dtype)
        widths = torch.tensor([5.37, 41.3, 1.73], dtype=torch.float64)
        args = (logits.requires_grad_(), image.requires_grad_(), ws.requires_grad_(), wb, mu, widths, 2,
                "symmetric", True)
        torch.library.opcheck(adapter._meanfield_op, args, test_utils=("test_faketensor", "test_schema"))
        out = crf_refine(logits, image, n_iter=2, spatial_dims=len(shape), **WIDTHS)
        assert out.is_contiguous(), name
        np.testing.assert_allclose(out.detach().numpy(), core_logits(logits, image.detach(), n_iter=2, **WIDTHS),
                                   rtol=1e-5, atol=1e-5, err_msg=name)
        handle = adapter._meanfield_op(*args)[1]
        grad = torch.ones_like(logits)
        torch.library.opcheck(adapter._meanfield_backward_op,
                              (handle, grad, logits.detach(), image.detach(), ws.detach(), wb, mu, widths, 2,
                               "symmetric", True), test_utils=("test_faketensor", "test_schema"))


@pytest.mark.parametrize("dtype, layout", [(torch.float64, "numpy channels last"), (torch.float32, "channels_last")])
def test_torch_compile_with_strided_inputs(rng, dtype, layout):
    """The reports' reproducers: CrfRnn in float64 on channels-last NumPy data, and channels_last float32."""
    logits, image = _layouts(rng, 2, 3, (12, 14), dtype)[layout]
    crf = CrfRnn(num_labels=3, num_iterations=3, theta_alpha=8.0, theta_beta=20.0, theta_gamma=2.0).to(dtype)
    eager = crf(image, logits)
    out = torch.compile(crf)(image, logits.requires_grad_())
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_empty_batch_gives_an_empty_result(rng):
    logits, image = batch(rng, b=2)
    logits, image = logits[:0].requires_grad_(), image[:0]
    out = crf_refine(logits, image, n_iter=2, **WIDTHS)
    assert out.shape == logits.shape
    out.sum().backward()
    assert logits.grad.shape == logits.shape
    assert CrfRnn(3, 2)(image.float(), logits.detach().float()).shape == logits.shape


@pytest.mark.parametrize("call, exc, match", [
    (lambda lg, im: crf_refine(lg.permute(0, 2, 3, 1), im), ValueError, "channels first"),
    (lambda lg, im: crf_refine(lg[:, :1], im), ValueError, "L >= 2"),
    (lambda lg, im: crf_refine(lg, im[..., :5]), ValueError, "must match in batch and spatial"),
    (lambda lg, im: crf_refine(lg.long(), im), TypeError, "float32 or float64"),
    (lambda lg, im: crf_refine(lg * float("nan"), im), ValueError, "`logits` contains"),
    (lambda lg, im: crf_refine(lg, im, theta_alpha=0.0), ValueError, "`theta_alpha` must be a positive"),
    (lambda lg, im: crf_refine(lg, im, w_spatial=torch.ones(2, 2)), ValueError, r"`w_spatial` must be"),
    (lambda lg, im: CrfRnn(1), ValueError, "`num_labels`"),
    (lambda lg, im: CrfRnn(num_labels=2)(im, lg), ValueError, r"CrfRnn\(num_labels=2\) got logits with 3 labels"),
    (lambda lg, im: crf_refine(lg.permute(0, 2, 3, 1).contiguous(), im.permute(0, 2, 3, 1).contiguous()), ValueError,
     "look channels last"),
    (lambda lg, im: CrfRnn(2, theta_beta=-1.0), ValueError, "`theta_beta`"),
])
def test_bad_inputs(rng, call, exc, match):
    logits, image = batch(rng, dtype=torch.float32)
    with pytest.raises(exc, match=match):
        call(logits, image)


def test_ddp_two_processes_equal_one_process():
    script = textwrap.dedent("""
        import gc, os, sys, numpy as np, torch, torch.distributed as dist, torch.multiprocessing as mp
        from torch.nn.parallel import DistributedDataParallel as DDP
        from crfcore.adapters.torch import CrfRnn

        def data():
            rng = np.random.default_rng(0)
            truth = torch.tensor(rng.uniform(size=(4, 10, 12)) > 0.5).long()
            logits = torch.tensor(rng.normal(size=(4, 2, 10, 12)), dtype=torch.float32) + truth[:, None] * 1.0
            image = torch.tensor(rng.uniform(0, 255, size=(4, 3, 10, 12)), dtype=torch.float32)
            return logits, image, truth

        def grads(model, logits, image, truth):
            loss = torch.nn.functional.cross_entropy(model(image, logits), truth)
            loss.backward()
            return [p.grad.clone() for p in model.parameters()]

        def worker(rank, path):
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
            dist.init_process_group("gloo", rank=rank, world_size=2)
            torch.manual_seed(0)
            model = DDP(CrfRnn(2, 3, theta_alpha=6.0, theta_beta=40.0, theta_gamma=2.0, trainable_widths=True))
            logits, image, truth = data()
            part = slice(2 * rank, 2 * rank + 2)
            g = grads(model, logits[part], image[part], truth[part])
            if rank == 0:
                torch.save(g, path)
            # drop the last reference to the process group first: its gloo threads are then joined here, not
            # left to destroy their finished work objects (which hold Python objects) while the interpreter shuts
            # down - PyTorch's gloo backend aborts the process then ("terminate called without an active
            # exception", seen in about 1 run in 10 here)
            del model
            gc.collect()
            dist.destroy_process_group()

        if __name__ == "__main__":
            path = sys.argv[2]
            mp.spawn(worker, args=(path,), nprocs=2, join=True)
            single = grads(CrfRnn(2, 3, theta_alpha=6.0, theta_beta=40.0, theta_gamma=2.0, trainable_widths=True),
                           *data())
            ddp = torch.load(path)
            print("max diff", max(float((a - b).abs().max()) for a, b in zip(single, ddp)))
    """)
    import socket
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "g.pt")
        script_path = os.path.join(tmp, "ddp.py")
        with open(script_path, "w") as f:
            f.write(script)
        proc = subprocess.run([sys.executable, script_path, port, path], capture_output=True, text=True, cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=ROOT, PYTHONFAULTHANDLER="1"), timeout=300)
    fatal = proc.stderr.find("Fatal Python error")  # faulthandler's report names the threads and where they were
    assert proc.returncode == 0, proc.stderr[fatal:fatal + 4000] if fatal >= 0 else proc.stderr[-3000:]
    diff = float(proc.stdout.split("max diff")[-1])
    assert diff < 1e-5  # DDP averages the two halves' gradients: the mean loss over the whole batch
