"""Compile every CUDA kernel of crfcore to PTX with the real compiler (no GPU needed, NVVM is): run by
tests/test_cuda.py in a process without the simulator. Exit 3 when there is no NVVM to compile with."""

import sys

try:
    from numba import cuda
    from numba.core import types as T
    from crfcore._kernels import cuda_lattice as L
    from crfcore._kernels import cuda_meanfield as M
except Exception as exc:  # pragma: no cover
    print("import failed:", exc)
    sys.exit(3)


def arr(dtype, ndim):
    return T.Array(dtype, ndim, "C")


i32, i64, u64, f64, u8, b1 = T.int32, T.int64, T.uint64, T.float64, T.uint8, T.boolean


def signatures(t):
    """The argument types crfcore._cuda launches each kernel with, compute dtype ``t``."""
    v1, v2 = arr(t, 1), arr(t, 2)
    return [
        (L.embed, (arr(f64, 2), arr(f64, 1), arr(i64, 1), arr(i64, 1), arr(u64, 1), v1, arr(u64, 2), arr(i32, 1),
                   arr(i64, 1))),
        (L.first_flags, (arr(i32, 1), arr(i64, 1), arr(i32, 1))),
        (L.scan_tiles, (arr(i32, 1), arr(i32, 1), arr(i64, 1), i64)),
        (L.scan_tiles, (arr(i64, 1), arr(i64, 1), arr(i64, 1), i64)),
        (L.scan_tiles, (arr(i32, 1), arr(i64, 1), arr(i64, 1), i64)),
        (L.add_tile_offsets, (arr(i32, 1), arr(i64, 1), i64)),
        (L.add_tile_offsets, (arr(i64, 1), arr(i64, 1), i64)),
        (L.vertex_ids, (arr(i32, 1), arr(i64, 1), arr(i32, 1), arr(i32, 1), arr(i32, 1))),
        (L.count_rows, (arr(i32, 1), arr(i32, 1))),
        (L.radix_histogram, (arr(i32, 1), i64, i64, i64, arr(i64, 1))),
        (L.radix_scatter, (arr(i32, 1), arr(i32, 1), i64, i64, i64, arr(i64, 1), arr(i32, 1), arr(i32, 1))),
        (L.blur_neighbours, (arr(u64, 2), arr(i32, 1), arr(i32, 1), arr(i32, 1), arr(u64, 1), arr(i64, 1),
                             arr(u64, 1), arr(i32, 3))),
        (L.iota, (arr(i32, 1),)),
        (L.splat, (v2, v1, v1, arr(i64, 1), arr(i32, 1), i64, v2)),
        (L.blur_step, (v2, arr(i32, 3), i64, v2)),
        (L.slice_, (v2, arr(i32, 1), v1, t, v1, v2, b1)),
        (L.slice_grad, (v2, arr(i32, 1), v2, v1, f64, arr(f64, 1))),
        (L.weights_to_features, (arr(f64, 2), arr(f64, 1), arr(f64, 1), arr(f64, 2))),
        (M.combine_softmax, (v2, v2, v2, v2, v2, b1, t, t, b1, v2, b1, v2, t)),
        (M.softmax, (v2, v2, t)),
        (M.add, (v2, v2)),
        (M.softmax_rows_bwd, (v2, v2, v2, t)),
        (M.combine_bwd, (v2, v2, v2, b1, t, t, v2, v2, v2, b1)),
        (M.subtract_message, (v2, v2, v2, b1, t, v2)),
        (M.outer_blocks, (v2, v2, v2, arr(f64, 4))),
        (M.sum_blocks, (arr(f64, 4), arr(f64, 3))),
        (M.iteration_bwd, (v2, v2, v2, v2, t)),
        (M.row_dots, (v2, v2, arr(f64, 1))),
        (M.normalisers, (v2, i64, v1, v1)),
        (M.norm_grad, (v1, v1, arr(f64, 1), arr(f64, 1), i64, v2)),
        (M.features, (arr(u8, 2), arr(i64, 1), arr(f64, 1), arr(f64, 1), b1, arr(f64, 2))),
        (M.features, (v2, arr(i64, 1), arr(f64, 1), arr(f64, 1), b1, arr(f64, 2))),
        (M.column_range, (arr(f64, 2), arr(f64, 2), arr(f64, 2), arr(i64, 2))),
        (M.column_range, (v2, arr(f64, 2), arr(f64, 2), arr(i64, 2))),
        (M.column_range, (arr(u8, 2), arr(f64, 2), arr(f64, 2), arr(i64, 2))),
        (M.column_dots, (arr(f64, 2), arr(f64, 2), i64, arr(f64, 2))),
        (M.image_grad, (arr(f64, 2), i64, arr(f64, 1), v2)),
        (M.copy_bytes, (arr(u8, 1), arr(u8, 1))),
        (M.widen, (arr(T.float32, 1), arr(f64, 1))),
        (M.fill, (v1, t)),
        (M.fill, (arr(i32, 1), i32)),
        (M.fill, (arr(i64, 1), i64)),
    ]


def main():
    count = 0
    for t in (f64, T.float32):
        for kernel, sig in signatures(t):
            try:
                ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}"
                if any(s in text for s in ("libnvvm", "NVVM", "nvrtc", "DynamicLibNotFound")) and count == 0:
                    print("no NVVM:", text[:500])
                    sys.exit(3)
                print(f"FAILED {kernel.py_func.__name__}{sig}: {text}")
                sys.exit(1)
            if kernel is L.embed and "fma" in ptx:
                print("FAILED: the embedding's PTX has a fused multiply-add")
                sys.exit(1)
            count += 1
    print(f"compiled {count} kernel specialisations to PTX for sm_90")


if __name__ == "__main__":
    main()
