"""Triton union-find kernel for :func:`udaseg.refine.refine` on CUDA tensors.

One program per image row (the rows of every image of the batch are stacked). Four launches:

1. ``_init``: class key (−1 where not confident) and, via a max-scan along the row, each pixel's
   parent = the first pixel of its horizontal run, so horizontal merging costs nothing.
2. ``_merge``: links runs of the row above (one link per vertical overlap, plus the diagonal
   contacts at run ends for 8-connectivity) with the lock-free atomic-min union: find both
   roots, hook the larger root under the smaller with ``atomic_min``; if the old value shows that
   the larger was no longer a root, retry from that old parent. Parents only ever decrease and
   point within a component, so no cycle can form and a link lost to a concurrent hook is
   restored by the retry; the result is correct under any interleaving of programs and lanes.
3. ``_count``: path compression (parent = root) and region sizes by one ``atomic_add`` of the
   run length per run (at the run's last pixel), not one per pixel.
4. ``_finalize``: keep the label iff confident and size ≥ threshold[class], else 255.

Correctness is checked on CPU with ``TRITON_INTERPRET=1`` (tests/test_refine.py); `compile_kernels`
compiles every launch to sm_80 / sm_90 machine code without a GPU (tests/test_gpu_paths.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


@triton.jit
def _key_at(labels_ptr, conf_ptr, offs, mask, conf_threshold, C: tl.constexpr):
    lab = tl.load(labels_ptr + offs, mask=mask, other=0).to(tl.int64)  # uint8 … int64 alike
    conf = tl.load(conf_ptr + offs, mask=mask, other=0.0)
    valid = mask & (lab >= 0) & (lab < C) & (conf >= conf_threshold)
    return tl.where(valid, lab, -1).to(tl.int32)


@triton.jit
def _init(labels_ptr, conf_ptr, key_ptr, parent_ptr, conf_threshold, W, C: tl.constexpr,
          BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x = tl.arange(0, BLOCK)
    inb = x < W
    base = row * W
    key = _key_at(labels_ptr, conf_ptr, base + x, inb, conf_threshold, C)
    left = _key_at(labels_ptr, conf_ptr, base + x - 1, inb & (x > 0), conf_threshold, C)
    start = (key >= 0) & ((x == 0) | (left != key))
    run0 = tl.associative_scan(tl.where(start, x, -1), 0, _max_combine)
    parent = tl.where(key >= 0, run0, x)
    tl.store(key_ptr + base + x, key, mask=inb)
    tl.store(parent_ptr + base + x, (base + parent).to(tl.int32), mask=inb)


@triton.jit
def _find(parent_ptr, a, todo):
    """Roots of a (lanes in ``todo``); reads only, no compression while links are in flight."""
    pa = tl.load(parent_ptr + a, mask=todo, other=0, volatile=True)
    go = todo & (pa != a)
    while tl.sum(go.to(tl.int32), axis=0) > 0:
        a = tl.where(go, pa, a)
        pa = tl.load(parent_ptr + a, mask=go, other=0, volatile=True)
        go = go & (pa != a)
    return a


@triton.jit
def _union(parent_ptr, a, b, todo):
    """Lock-free union of the components of a and b for the lanes in ``todo``."""
    while tl.sum(todo.to(tl.int32), axis=0) > 0:
        a = _find(parent_ptr, a, todo)
        b = _find(parent_ptr, b, todo)
        need = todo & (a != b)
        hi = tl.maximum(a, b)
        lo = tl.minimum(a, b)
        old = tl.atomic_min(parent_ptr + hi, lo, mask=need)
        a_is_hi = a > b
        # hi was still a root: hooked. Otherwise hi had meanwhile been hooked under `old`
        # (and may just have lost that link to `lo`): retry the union of old and lo.
        a = tl.where(need & a_is_hi, old, a)
        b = tl.where(need & ~a_is_hi, old, b)
        todo = need & (old != hi)


@triton.jit
def _merge(key_ptr, parent_ptr, W, H, EIGHT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    x = tl.arange(0, BLOCK)
    inb = x < W
    # the first row of an image links to nothing above (a vector: H may be specialised to 1)
    lower = ((tl.zeros([BLOCK], tl.int32) + row) % H) != 0
    base = row.to(tl.int64) * W
    up_base = base - W
    key = tl.load(key_ptr + base + x, mask=inb, other=-2)
    key_l = tl.load(key_ptr + base + x - 1, mask=inb & (x > 0), other=-2)
    key_r = tl.load(key_ptr + base + x + 1, mask=x + 1 < W, other=-2)
    umask = inb & lower
    up = tl.load(key_ptr + up_base + x, mask=umask, other=-3)
    up_l = tl.load(key_ptr + up_base + x - 1, mask=umask & (x > 0), other=-3)
    up_r = tl.load(key_ptr + up_base + x + 1, mask=umask & (x + 1 < W), other=-3)
    valid = key >= 0
    vsame = valid & (up == key)
    vsame_l = (key_l >= 0) & (up_l == key_l)
    first = vsame & ~(vsame_l & (key_l == key))  # first pixel of a vertical overlap
    p = (base + x).to(tl.int32)
    _union(parent_ptr, p, (up_base + x).to(tl.int32), first)
    if EIGHT:
        start = valid & (key_l != key)
        end = valid & (key_r != key)
        dl = start & (up_l == key) & ~(vsame & (up_l == up))
        dr = end & (up_r == key) & ~(vsame & (up_r == up))
        _union(parent_ptr, p, (up_base + x - 1).to(tl.int32), dl)
        _union(parent_ptr, p, (up_base + x + 1).to(tl.int32), dr)


@triton.jit
def _count(key_ptr, parent_ptr, size_ptr, W, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x = tl.arange(0, BLOCK)
    inb = x < W
    base = row * W
    key = tl.load(key_ptr + base + x, mask=inb, other=-2)
    key_l = tl.load(key_ptr + base + x - 1, mask=inb & (x > 0), other=-2)
    key_r = tl.load(key_ptr + base + x + 1, mask=x + 1 < W, other=-2)
    valid = key >= 0
    root = _find(parent_ptr, (base + x).to(tl.int32), valid)
    tl.store(parent_ptr + base + x, root, mask=valid)  # every link is final: compress
    start = valid & (key_l != key)
    end = valid & (key_r != key)
    run0 = tl.associative_scan(tl.where(start, x, -1), 0, _max_combine)
    tl.atomic_add(size_ptr + root, (x - run0 + 1).to(tl.int32), mask=end)


@triton.jit
def _finalize(key_ptr, parent_ptr, size_ptr, thr_ptr, out_ptr, W, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x = tl.arange(0, BLOCK)
    inb = x < W
    base = row * W
    key = tl.load(key_ptr + base + x, mask=inb, other=-1)
    valid = key >= 0
    root = tl.load(parent_ptr + base + x, mask=valid, other=0)
    size = tl.load(size_ptr + root, mask=valid, other=0)
    thr = tl.load(thr_ptr + key, mask=valid, other=0.0)
    keep = valid & (size.to(tl.float64) >= thr)
    out = tl.where(keep, key, 255)
    tl.store(out_ptr + base + x, out.to(out_ptr.dtype.element_ty), mask=inb)


@dataclass(frozen=True)
class Launch:
    """One kernel launch of `refine_triton`: the kernel, its runtime arguments in order, its
    compile-time constants and warp count. `launches` is the one place that builds them, so the
    ahead-of-time compile (`compile_kernels`) sees exactly what a GPU run launches."""

    kernel: object  # a triton JITFunction
    args: tuple
    constexprs: dict
    num_warps: int


def launches(labels: torch.Tensor, confidence: torch.Tensor, thresholds: torch.Tensor, out: torch.Tensor,
             key: torch.Tensor, parent: torch.Tensor, size: torch.Tensor, conf_threshold: float,
             connectivity: int) -> list[Launch]:
    """The four launches for a [B, H, W] batch (any device: `compile_kernels` passes meta tensors)."""
    _, h, w = labels.shape
    block = triton.next_power_of_2(w)
    warps = max(1, min(16, block // 256))
    c = thresholds.numel()
    return [
        Launch(_init, (labels, confidence, key, parent, float(conf_threshold), w), {"C": c, "BLOCK": block}, warps),
        Launch(_merge, (key, parent, w, h), {"EIGHT": connectivity == 8, "BLOCK": block}, warps),
        Launch(_count, (key, parent, size, w), {"BLOCK": block}, warps),
        Launch(_finalize, (key, parent, size, thresholds, out, w), {"BLOCK": block}, warps),
    ]


def _buffers(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, key, parent, size) for a batch of labels, on its device: `launches`' buffer arguments."""
    n, dev = labels.numel(), labels.device
    return (torch.empty_like(labels), torch.empty(n, dtype=torch.int32, device=dev),
            torch.empty(n, dtype=torch.int32, device=dev), torch.zeros(n, dtype=torch.int32, device=dev))


def refine_triton(labels: torch.Tensor, confidence: torch.Tensor, thresholds: torch.Tensor,
                  conf_threshold: float = 0.9, connectivity: int = 8) -> torch.Tensor:
    """Triton implementation of :func:`udaseg.refine.refine` for contiguous [B, H, W] tensors."""
    b, h, w = labels.shape
    n = labels.numel()
    if n >= 2**31 - 1:
        raise ValueError(f"refine_triton: {n} pixels exceed int32 indexing; split the batch")
    out, key, parent, size = _buffers(labels)
    thr = thresholds.to(device=labels.device, dtype=torch.float64).contiguous()
    for launch in launches(labels, confidence, thr, out, key, parent, size, conf_threshold, connectivity):
        launch.kernel[(b * h,)](*launch.args, **launch.constexprs, num_warps=launch.num_warps)
    return out


# The dtypes `refine` meets: pseudolabel (uint8 labels, fp32 softmax), predict under amp (fp16 / bf16
# softmax), and wider integer labels from library callers.
COMPILE_DTYPES = ((torch.uint8, torch.float32), (torch.uint8, torch.float16), (torch.uint8, torch.bfloat16),
                  (torch.int64, torch.float32))


def compile_kernels(capability: int, width: int = 2048, num_classes: int = 16,
                    dtypes=COMPILE_DTYPES, connectivities=(4, 8)) -> list[str]:
    """Compile every distinct launch of `refine_triton` for CUDA compute capability `capability`
    (80 = A100, 90 = H100) down to a cubin, with no GPU: Triton's front end, its LLVM lowering and
    the ptxas shipped in the wheel. Catches type and lowering errors that TRITON_INTERPRET=1 cannot.
    Raises on the first compile error; returns one line per compiled kernel."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction, mangle_type

    target = GPUTarget("cuda", capability, 32)
    seen, done = set(), []
    thr = torch.empty(num_classes, dtype=torch.float64, device="meta")
    for label_dtype, conf_dtype in dtypes:
        labels = torch.empty(2, 8, width, dtype=label_dtype, device="meta")
        confidence = torch.empty(labels.shape, dtype=conf_dtype, device="meta")
        for connectivity in connectivities:
            for launch in launches(labels, confidence, thr, *_buffers(labels), 0.9, connectivity):
                kernel = launch.kernel
                if not isinstance(kernel, JITFunction):
                    raise RuntimeError(f"{getattr(kernel, '__name__', kernel)} is not a compiled Triton kernel "
                                       "(TRITON_INTERPRET=1 is set?): unset it to compile")
                runtime = iter(launch.args)
                signature = {name: "constexpr" if name in launch.constexprs else mangle_type(next(runtime))
                             for name in kernel.arg_names}
                name = kernel.fn.__name__
                ident = (name, tuple(signature.items()), tuple(sorted(launch.constexprs.items())), launch.num_warps)
                if ident in seen:
                    continue
                seen.add(ident)
                src = ASTSource(fn=kernel, signature=signature, constexprs=dict(launch.constexprs))
                compiled = triton.compile(src, target=target, options={"num_warps": launch.num_warps})
                if not compiled.asm.get("cubin"):
                    raise RuntimeError(f"{name}: Triton produced no cubin for sm_{capability}")
                done.append(f"sm_{capability} {name}({', '.join(v for v in signature.values() if v != 'constexpr')}) "
                            f"{launch.constexprs} warps={launch.num_warps}: {len(compiled.asm['cubin'])} bytes")
    return done
