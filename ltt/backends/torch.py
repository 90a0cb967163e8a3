"""The torch attribution backend: the C core's math (:mod:`ltt._reference` defines it) in
PyTorch, on the device that holds the layer.

Every kernel of :mod:`ltt.kernels` has its namesake here with the same arguments and
results (NumPy arrays back on the host). Precision: the parts are formed in float32 from the
model's float32 (or half-precision, widened) numbers as in the core, distances and normalisers
are accumulated in float64, shares are float32.

:meth:`TorchBackend.attribute_layer` scores a whole layer on its device and copies only the
compact results to the host: the per-target shares ``[T]``, the normalisers, and the sparse
rows above the floor (selected, ordered and counted on the device, one copy per kv group).
There is no host synchronisation per head: heads are scored in batches (all heads, or one kv
group at a time in the "heads"/"stream" modes of :mod:`ltt.plan`).

Device memory of one layer (float32 probabilities, float64 raws): ``4 H T^2`` (probabilities) +
``8 H T^2`` (raws) + ``4 H T^2`` (shares) + ``4 H T d`` (head vectors) + the distance chunk
(:data:`CHUNK_BYTES`); per kv group instead of per layer in the "heads" and "stream" modes.
docs/gpu.md has the numbers at 7B and 4,096 tokens.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ltt.scores import LayerScores, SparseRows

EPS = 1e-5
#: Bytes of the transient ``[heads, targets, sources, d]`` block one distance step makes.
CHUNK_BYTES = 256 * 2**20
#: Bytes of one batch of heads' transient raws and shares in the "heads" and "stream" modes.
BATCH_BYTES = 2 * 2**30
_F64 = torch.float64


def batch_bytes_per_head(T: int) -> int:
    """Device bytes one head of a batch takes: float64 raws and shares, float32 shares and the
    floor mask ``[T, T]`` each (``21 T^2``), its probabilities (``4 T^2``)."""
    return 25 * T * T


def _t(x: Any, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=dtype)
    arr = np.asarray(x)
    if arr.dtype.kind not in "f":
        raise TypeError(f"expected a floating array, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # a read-only view (a spilled memory map): torch wants to own it
        arr = arr.copy()
    return torch.from_numpy(arr).to(device=device, dtype=dtype)


def _host(x: torch.Tensor, dtype: Any = np.float32) -> np.ndarray:
    return x.detach().cpu().numpy().astype(dtype, copy=False)


def _dist(x: torch.Tensor, norm: int) -> torch.Tensor:
    """The norm over the last axis, accumulated in float64."""
    if norm == 1:
        return x.abs().sum(-1, dtype=_F64)
    x = x.to(_F64)
    return (x * x).sum(-1).sqrt()


def _raw(whole: torch.Tensor, part: torch.Tensor, norm: int) -> torch.Tensor:
    """``max(||whole|| - ||whole - part||, EPS)`` (broadcasting), float64."""
    return (_dist(whole, norm) - _dist(whole - part, norm)).clamp_min(EPS)


def head_vectors(values: torch.Tensor, w_o: torch.Tensor, heads: Sequence[int], col_scale: torch.Tensor | None,
                 center: bool) -> torch.Tensor:
    """``u[h, s] = T(values[s, g(h)] @ w_o[h])`` for ``heads``: ``[n, T, d]`` float32."""
    H, G = w_o.shape[0], values.shape[1]
    per = H // G
    idx = torch.as_tensor([h // per for h in heads], device=values.device)
    v = values.index_select(1, idx).transpose(0, 1)  # [n, T, d_h]
    u = torch.bmm(v, w_o[list(heads)])
    if center:
        u = (u.to(_F64) - u.to(_F64).mean(-1, keepdim=True)).to(torch.float32)
    if col_scale is not None:
        u = u * col_scale
    return u


def _dist_block(w: torch.Tensor, a: torch.Tensor, u: torch.Tensor, norm: int) -> torch.Tensor:
    """``||w[t] - a[h,t,s] u[h,s]||`` ``[n, nt, S]`` accumulated in float32 (``w [nt, d]``,
    ``a [n, nt, S]``, ``u [n, S, d]``): the CUDA path, compiled into one reduction kernel so the
    ``[n, nt, S, d]`` block is never materialised."""
    x = w[None, :, None, :] - a[..., None] * u[:, None, :, :]
    return x.abs().sum(-1) if norm == 1 else (x * x).sum(-1).sqrt()


_COMPILED: dict[str, Any] = {}


def _fused() -> Any:
    """:func:`_dist_block` compiled by torch.compile (dynamic shapes), or None where it cannot
    be (no Triton): the eager chunked path is used then."""
    if "fn" not in _COMPILED:
        try:
            _COMPILED["fn"] = torch.compile(_dist_block, dynamic=True)
        except Exception:  # pragma: no cover - depends on the installation
            _COMPILED["fn"] = None
    return _COMPILED["fn"]


def head_raws(whole: torch.Tensor, a: torch.Tensor, u: torch.Tensor, norm: int,
              chunk_bytes: int = CHUNK_BYTES) -> torch.Tensor:
    """Raws ``[n, T, T]`` float64 of every (head, target, source <= t) part ``a[h,t,s] u[h,s]``
    (``a`` already times the row scale), zero above the diagonal, in chunks of targets. On the
    CPU the distances are accumulated in float64 from float32 parts (as the C core); on CUDA by
    the fused float32 kernel of :func:`_dist_block` when torch.compile works there."""
    n, T, d = u.shape
    out = torch.zeros((n, T, T), dtype=_F64, device=u.device)
    wn = _dist(whole, norm)  # [T]
    fused = _fused() if u.is_cuda else None
    per_target = 4 * n * T if fused is not None else 16 * n * T * d  # bytes of one target row's block
    step = max(1, min(T, chunk_bytes // max(per_target, 1)))
    heads_step = n if step > 1 or per_target <= chunk_bytes else max(1, chunk_bytes // (16 * T * d))
    for h0 in range(0, n, heads_step):
        h1 = min(n, h0 + heads_step)
        for t0 in range(0, T, step):
            t1 = min(T, t0 + step)
            if fused is not None:
                try:
                    dist = fused(whole[t0:t1], a[h0:h1, t0:t1, :t1].contiguous(), u[h0:h1, :t1], norm).to(_F64)
                except Exception:  # pragma: no cover - a compiler failure: eager from now on
                    _COMPILED["fn"] = fused = None
                    return head_raws(whole, a, u, norm, chunk_bytes)
            else:
                parts = a[h0:h1, t0:t1, :t1, None] * u[h0:h1, None, :t1, :]  # [nh, nt, S, d]
                dist = _dist(whole[None, t0:t1, None, :] - parts, norm)
                del parts
            raw = (wn[None, t0:t1, None] - dist).clamp_min(EPS)
            causal = torch.ones((t1 - t0, t1), dtype=torch.bool, device=u.device).tril(t0)
            out[h0:h1, t0:t1, :t1] = raw * causal
    return out


class _Sparse:
    """Sparse rows selected on the device, batch by batch of heads, equal to
    :meth:`ltt.scores.SparseRows.from_heads` (entries ``>= floor`` plus each row's first
    largest), copied to the host once at :meth:`rows`."""

    def __init__(self, T: int, floor: float, device: torch.device):
        self.T, self.floor, self.device = T, floor, device
        self.keys: list[torch.Tensor] = []
        self.vals: list[torch.Tensor] = []
        self.best_v = torch.full((T,), -1.0, dtype=torch.float32, device=device)
        self.best_h = torch.zeros(T, dtype=torch.int64, device=device)
        self.best_s = torch.zeros(T, dtype=torch.int64, device=device)

    def add(self, maps: torch.Tensor, h0: int) -> None:
        """``maps [n, T, S]`` float32, heads ``h0 .. h0 + n - 1``."""
        n, T, S = maps.shape
        idx = (maps >= self.floor).nonzero()  # [k, 3] (head, target, source), one sync per batch
        self.vals.append(maps[idx[:, 0], idx[:, 1], idx[:, 2]])
        self.keys.append(idx[:, 1] * (1 << 40) + (idx[:, 0] + h0) * (1 << 20) + idx[:, 2])
        bs = maps.argmax(dim=2)  # per head and row: the first largest source
        bv = maps.gather(2, bs[..., None])[..., 0]
        rh = bv.argmax(dim=0)  # per row: the first head holding it
        rv = bv.gather(0, rh[None])[0]
        better = rv > self.best_v  # an earlier head keeps a tie
        rows = torch.arange(T, device=maps.device)
        self.best_v = torch.where(better, rv, self.best_v)
        self.best_h = torch.where(better, rh + h0, self.best_h)
        self.best_s = torch.where(better, bs[rh, rows], self.best_s)

    def rows(self, per_head: bool = True) -> SparseRows:
        T = self.T
        rows = torch.arange(T, device=self.device)
        missing = self.best_v < self.floor
        keys = torch.cat(self.keys + [rows[missing] * (1 << 40) + self.best_h[missing] * (1 << 20)
                                      + self.best_s[missing]])
        vals = torch.cat(self.vals + [self.best_v[missing]])
        keys, order = keys.sort()
        vals = vals[order]
        t = keys >> 40
        counts = torch.bincount(t, minlength=T)
        k, v, c = keys.cpu().numpy(), vals.cpu().numpy(), counts.cpu().numpy()  # the one copy back
        indptr = np.zeros(T + 1, np.int64)
        np.cumsum(c, out=indptr[1:])
        heads = ((k >> 20) & ((1 << 20) - 1)).astype(np.int16) if per_head else None
        return SparseRows(indptr, (k & ((1 << 20) - 1)).astype(np.int32), v.astype(np.float32), heads)


class TorchBackend:
    """The torch backend of a model whose layers live on ``layer_devices`` (one torch device per
    layer). Its kernels take NumPy arrays or tensors and return NumPy arrays."""

    name = "torch"

    def __init__(self, layer_devices: Sequence[Any]):
        self.layer_devices = [torch.device(d) for d in layer_devices]
        cuda = [d for d in self.layer_devices if d.type == "cuda"]
        self.device = cuda[0] if cuda else torch.device("cpu")

    def __repr__(self) -> str:
        return f"TorchBackend(device={str(self.device)!r})"

    # -- the kernels of ltt.kernels ---------------------------------------------------------

    def contributions(self, parts: Any, whole: Any, norm: int = 1) -> np.ndarray:
        dev = self.device
        raw = _raw(_t(whole, dev)[None], _t(parts, dev), norm)
        return _host(raw / raw.sum(0, keepdim=True))

    def _layer_raws(self, dev, resid, whole, attn, values, w_o, bias, extra, row_scale, col_scale, center, norm,
                    heads=None):
        w = _t(whole, dev)
        a = _t(attn, dev)
        if row_scale is not None:
            a = a * _t(row_scale, dev)[None, :, None]
        H = int(np.shape(w_o)[0])
        heads = list(range(H)) if heads is None else list(heads)
        u = head_vectors(_t(values, dev), _t(w_o, dev), heads, _t(col_scale, dev), center)
        raws = head_raws(w, a, u, norm)
        res = _raw(w, _t(resid, dev), norm) if resid is not None else None
        b = None if bias is None else _raw(w, _t(bias, dev).expand_as(w), norm)
        ex = None if extra is None else _raw(w[None], _t(extra, dev).reshape(-1, *w.shape), norm)
        return raws, res, b, ex

    def attn_contrib(self, resid, whole, attn, values, w_o, bias=None, extra=None, row_scale=None,
                     col_scale=None, center=False, norm=1, keep_heads=False) -> dict[str, np.ndarray]:
        dev = self.device
        raws, res, b, ex = self._layer_raws(dev, resid, whole, attn, values, w_o, bias, extra, row_scale,
                                            col_scale, bool(center), norm)
        T = raws.shape[1]
        total = raws.sum(dim=(0, 2)) + res + (0 if b is None else b) + (0 if ex is None else ex.sum(0))
        shares = raws / total[None, :, None]
        out = {
            "edges": _host(shares.sum(0)),
            "resid": _host(res / total),
            "bias": _host(b / total) if b is not None else np.zeros(T, np.float32),
            "extra": _host(ex / total[None]) if ex is not None else np.zeros((0, T), np.float32),
            "total": _host(total, np.float64),
        }
        if keep_heads:
            out["heads"] = _host(shares)
        return out

    def attn_head_map(self, head, whole, attn, values, w_o, total, row_scale=None, col_scale=None,
                      center=False, norm=1) -> np.ndarray:
        dev = self.device
        a = _t(np.asarray(attn)[head : head + 1] if not isinstance(attn, torch.Tensor) else attn[head : head + 1], dev)
        raws, _, _, _ = self._layer_raws(dev, None, whole, a, values, w_o, None, None, row_scale, col_scale,
                                         bool(center), norm, heads=[head])
        # the probabilities of the one head were sliced above: its vectors are head `head`'s
        return _host(raws[0] / _t(total, dev, _F64)[:, None])

    def attn_edge_heads(self, target, source, whole, attn, values, w_o, total, row_scale=None, col_scale=None,
                        center=False, norm=1) -> np.ndarray:
        dev = self.device
        w = _t(whole, dev)[target]
        a = _t(np.asarray(attn)[:, target, source] if not isinstance(attn, torch.Tensor)
               else attn[:, target, source], dev)
        if row_scale is not None:
            a = a * float(np.asarray(row_scale)[target])
        H = int(np.shape(w_o)[0])
        u = head_vectors(_t(values, dev)[source : source + 1], _t(w_o, dev), range(H), _t(col_scale, dev),
                         bool(center))[:, 0]  # [H, d]
        raw = _raw(w[None], a[:, None] * u, norm)
        return _host(raw / float(np.asarray(total, np.float64)[target]))

    def ffn_neuron_contrib(self, act, w_down, resid, whole, bias=None, row_scale=None, col_scale=None,
                           center=False, norm=1) -> dict[str, np.ndarray]:
        dev = self.device
        a, w, x = _t(act, dev), _t(whole, dev), _t(resid, dev)
        wd = _t(w_down, dev)
        if center:
            wd = (wd.to(_F64) - wd.to(_F64).mean(-1, keepdim=True)).to(torch.float32)
        if col_scale is not None:
            wd = wd * _t(col_scale, dev)
        if row_scale is not None:
            a = a * _t(row_scale, dev)[:, None]
        N, F = a.shape
        d = wd.shape[1]
        neurons = torch.empty((N, F), dtype=_F64, device=dev)
        wn = _dist(w, norm)
        step = max(1, CHUNK_BYTES // (16 * d))  # neurons per chunk
        for n in range(N):
            for f0 in range(0, F, step):
                f1 = min(F, f0 + step)
                dist = _dist(w[n][None] - a[n, f0:f1, None] * wd[f0:f1], norm)
                neurons[n, f0:f1] = (wn[n] - dist).clamp_min(EPS)
        res = _raw(w, x, norm)
        b = None if bias is None else _raw(w, _t(bias, dev).expand_as(w), norm)
        total = neurons.sum(1) + res + (0 if b is None else b)
        return {
            "neurons": _host(neurons / total[:, None]),
            "resid": _host(res / total),
            "bias": _host(b / total) if b is not None else np.zeros(N, np.float32),
            "total": _host(total, np.float64),
        }

    # -- one layer of a trace ------------------------------------------------------------------

    def attribute_layer(self, lb: Any, probs: Any, mode: str, norm: int, floor: float) -> LayerScores:
        """:func:`ltt.scores.attribute_layer` on the layer's device (see the module docstring)."""
        dev = self.layer_devices[lb.layer] if lb.layer < len(self.layer_devices) else self.device
        whole = _t(lb.resid_post if lb.parallel else lb.resid_mid, dev)
        values, w_o = _t(lb.values, dev), _t(lb.w_o, dev)
        H, G, T = int(w_o.shape[0]), int(values.shape[1]), lb.n_tokens
        post = lb.attn_norm
        row = _t(post.row_scale, dev)
        col = _t(post.col_scale, dev)
        wn_res = _raw(whole, _t(lb.resid_pre, dev), norm)
        b = None if lb.attn_bias is None else _raw(whole, _t(lb.attn_bias, dev).expand_as(whole), norm)
        ex = _raw(whole, _t(lb.ffn_out, dev), norm) if lb.parallel else None
        # batches of heads: the whole layer at once, or as many heads as BATCH_BYTES holds
        n = H if mode in ("dense", "layer") else max(1, min(H, BATCH_BYTES // (batch_bytes_per_head(T))))
        batches = [list(range(h, min(H, h + n))) for h in range(0, H, n)]
        held = None if probs.streamed else _t(probs.take(), dev)

        def raws_of(heads: list[int]) -> torch.Tensor:
            a = held[heads] if held is not None else _t(probs.heads(heads), dev)
            if row is not None:
                a = a * row[None, :, None]
            return head_raws(whole, a, head_vectors(values, w_o, heads, col, post.center), norm)

        kept = None
        head_total = torch.zeros(T, dtype=_F64, device=dev)
        for heads in batches:  # first pass: the normalisers
            r = raws_of(heads)
            head_total += r.sum(dim=(0, 2))
            kept = r if len(batches) == 1 else None
            del r
        total = head_total + wn_res + (0 if b is None else b) + (0 if ex is None else ex)
        edges = torch.zeros((T, T), dtype=_F64, device=dev)
        parts = _Sparse(T, floor, dev)
        dense_heads = None
        for heads in batches:  # second pass: the shares, sparsified on the device
            r = kept if kept is not None else raws_of(heads)
            shares = r / total[None, :, None]
            del r
            edges += shares.sum(0)
            shares = shares.to(torch.float32)
            if mode == "dense":
                dense_heads = shares
            else:
                parts.add(shares, heads[0])
            del shares
        kept = held = None
        edges32 = edges.to(torch.float32)
        if lb.parallel:
            ffn, ffn_resid = _host(ex / total), np.zeros(T, np.float32)
        else:
            block = self.contributions(np.stack([lb.resid_mid, lb.ffn_out]), lb.resid_post, norm=norm)
            ffn_resid, ffn = block[0], block[1]
        edge_rows = None
        if mode != "dense":
            e = _Sparse(T, floor, dev)
            e.add(edges32[None], 0)
            edge_rows = e.rows(per_head=False)
        return LayerScores(
            attn_resid=_host(wn_res / total), attn_bias=_host(b / total) if b is not None else np.zeros(T, np.float32),
            ffn=ffn, ffn_resid=ffn_resid, total=_host(total, np.float64), parallel=bool(lb.parallel),
            edges=edge_rows, parts=None if mode == "dense" else parts.rows(), n_heads=H,
            dense_heads=_host(dense_heads) if dense_heads is not None else None,
            dense_edges=_host(edges32) if mode == "dense" else None,
        )

    # -- device memory -------------------------------------------------------------------------

    def check_device_memory(self, model: Any, plan: Any) -> None:
        """Refuse, before the forward pass, a trace whose layer transient does not fit the free
        memory of a CUDA device (:func:`ltt.backends.memory.layer_bytes`)."""
        from ltt.backends.memory import check_device_memory

        check_device_memory(model, plan, self.layer_devices)
