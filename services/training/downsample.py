"""Downsampling a metric series for charts: Largest-Triangle-Three-Buckets.

Source: Sveinn Steinarsson, "Downsampling Time Series for Visual Representation",
MSc thesis, University of Iceland, 2013 (algorithm LTTB, section 4.2). It keeps the
first and last point and, from each of ``n - 2`` equal buckets in between, the point
that forms the largest triangle with the point kept from the previous bucket and the
mean of the next bucket: peaks and sudden drops (a grokking transition) survive, where
averaging or every-k-th sampling would flatten or skip them.

Written here rather than taken from a package: the one maintained implementation on
PyPI (``lttb``) requires numpy arrays of shape (n, 2) and rejects NaN, and the service
downsamples a few thousand rows per call at most once per chart open; 30 lines of
plain Python are the smaller dependency.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["lttb_indices"]


def lttb_indices(xs: Sequence[float], ys: Sequence[float], threshold: int) -> list[int]:
    """Indices of the points to keep, ascending; all of them when ``len(xs) <= threshold``.

    ``xs`` must be ascending. ``threshold`` >= 1: 1 keeps the last point, 2 the first
    and last. A NaN ``y`` counts as 0 for the triangle areas (it is never dropped for
    being NaN). Cost O(len(xs)).
    """
    n = len(xs)
    if threshold <= 0:
        raise ValueError("threshold must be >= 1")
    if n <= threshold:
        return list(range(n))
    if threshold == 1:
        return [n - 1]
    if threshold == 2:
        return [0, n - 1]

    def y(i: int) -> float:
        v = ys[i]
        return 0.0 if v != v else v  # NaN → 0

    keep = [0]
    every = (n - 2) / (threshold - 2)
    a = 0
    for i in range(threshold - 2):
        start = int(i * every) + 1
        end = int((i + 1) * every) + 1
        nxt_start, nxt_end = end, min(int((i + 2) * every) + 1, n)
        if nxt_start >= nxt_end:  # last bucket: the next "bucket" is the last point
            nxt_start, nxt_end = n - 1, n
        count = nxt_end - nxt_start
        avg_x = sum(xs[j] for j in range(nxt_start, nxt_end)) / count
        avg_y = sum(y(j) for j in range(nxt_start, nxt_end)) / count
        ax, ay = xs[a], y(a)
        best, best_area = start, -1.0
        for j in range(start, min(end, n - 1)):
            area = abs((ax - avg_x) * (y(j) - ay) - (ax - xs[j]) * (avg_y - ay))
            if area > best_area:
                best, best_area = j, area
        keep.append(best)
        a = best
    keep.append(n - 1)
    return keep
