"""Packing geometry (compiler/placement/geometry.py): shelf, skyline and strip packings place
rectangles where worked by hand, or say they do not fit; contiguous splits are the least
largest."""

from __future__ import annotations

from compiler.placement.geometry import (
    balanced_split,
    min_max_split,
    shelf_pack,
    skyline_pack,
    strip_pack,
    strip_width,
)


def test_shelf_packers() -> None:
    dims = [(2, 3)] * 5
    assert shelf_pack(4, 9, dims, snake=False) == ((0, 0), (0, 3), (0, 6), (2, 0), (2, 3))
    # serpentine: the second band runs right to left, starting under the end of the first
    assert shelf_pack(4, 9, dims, snake=True) == ((0, 0), (0, 3), (0, 6), (2, 6), (2, 3))
    assert shelf_pack(4, 9, [(2, 3)] * 7, snake=True) is None
    # skyline: tallest (then widest) first, each where its top is lowest, then leftmost
    assert skyline_pack(4, 6, [(2, 2), (4, 2), (2, 2), (2, 4)]) == ((2, 2), (0, 0), (2, 4), (0, 2))
    assert skyline_pack(4, 6, [(4, 4), (4, 4)]) is None


def test_strip_pack_stacks_each_class_in_strips() -> None:
    # 4x2 stack two high on 8 rows: strips 2 wide, filled down then up; a 8x1 strip of its own
    dims = [(4, 2)] * 3 + [(8, 1)] + [(4, 2)] * 2
    assert strip_width(8, 7, dims, "columns") == 3 * 2 + 1
    assert strip_pack(8, 7, dims, "columns") == (
        (0, 0), (4, 0), (4, 2), (0, 6), (0, 2), (0, 4))
    assert strip_pack(8, 6, dims, "columns") is None  # 7 columns of strips
    # rows: the same, turned sideways
    assert strip_pack(7, 8, [(w, h) for h, w in dims], "rows") == (
        (0, 0), (0, 4), (2, 4), (6, 0), (2, 0), (4, 0))


def test_min_max_split() -> None:
    assert min_max_split([5, 1, 1, 1, 1, 1, 5], 3) == (0, 1, 1, 1, 1, 1, 2)
    assert min_max_split([4, 4, 4], 5) == (0, 1, 2)


def test_balanced_split_under_a_capacity() -> None:
    loads, sizes = [5, 1, 1, 1, 1, 1, 5], [1] * 7  # at most 2 items a range
    assert balanced_split(loads, sizes, 3, 2) is None
    split = balanced_split(loads, sizes, 4, 2)
    assert split is not None and max(split.count(k) for k in set(split)) <= 2
    assert max(sum(x for x, k in zip(loads, split, strict=True) if k == part)
               for part in set(split)) == 6
    assert balanced_split([1], [3], 1, 2) is None  # an item bigger than a wafer
