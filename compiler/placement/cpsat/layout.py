"""Stage 2 of the CP-SAT placer, one model: fixed-size rectangles on one wafer's grid.

Mandatory rectangles under NoOverlap2D, per-edge centre distances in doubled coordinates with
the separation cut dx + dy >= min(w_i + w_j, h_i + h_j) (without it the bound stays at 0,
notes/placement.md), and objective sum bytes x (dx + dy). Instance (LayoutInstance) ->
variables (LayoutVars) -> one add_* per constraint family -> objective -> hint -> solve_layout
-> LayoutResult. wafer.py runs it coarse then fine, lns.py on neighbourhoods.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from compiler.placement.chain import cost
from compiler.placement.check import separation_bound2
from compiler.placement.cpsat.runner import Clock, run
from compiler.placement.geometry import Position
from compiler.placement.problem import PlacementProblem

# -- instance ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayoutInstance:
    """Rectangles of fixed size on a rows x cols grid (cells or cores), with weighted edges."""

    rows: int
    cols: int
    dims: tuple[tuple[int, int], ...]  # (rows, cols) per rectangle
    edges: tuple[tuple[int, int, int], ...]  # (i, j, weight) between local rectangles, i != j
    row_range: tuple[tuple[int, int], ...]  # allowed top rows [lo, hi] per rectangle
    col_range: tuple[tuple[int, int], ...]
    hint: tuple[Position, ...] | None


def full_ranges(rows: int, cols: int, dims: Sequence[tuple[int, int]]) -> dict:
    return {"row_range": tuple((0, rows - h) for h, _ in dims),
            "col_range": tuple((0, cols - w) for _, w in dims)}


def layout_for(
    problem: PlacementProblem, options: Sequence[int], members: Sequence[int]
) -> LayoutInstance:
    """One wafer's blocks (`members`, in block order) with their chosen options, unhinted."""
    dims = tuple((problem.blocks[b].options[options[b]].rows,
                  problem.blocks[b].options[options[b]].cols) for b in members)
    return LayoutInstance(problem.rows, problem.cols, dims, wafer_edges(problem, members),
                          hint=None, **full_ranges(problem.rows, problem.cols, dims))


def wafer_edges(problem: PlacementProblem, members: Sequence[int]) -> tuple[tuple[int, int, int],
                                                                             ...]:
    """Edges inside one wafer in local indices, parallel edges merged."""
    local = {b: i for i, b in enumerate(members)}
    merged: dict[tuple[int, int], int] = {}
    for e in problem.edges:
        if e.src in local and e.dst in local and e.src != e.dst:
            key = (min(local[e.src], local[e.dst]), max(local[e.src], local[e.dst]))
            merged[key] = merged.get(key, 0) + e.bytes_per_token
    return tuple((i, j, w) for (i, j), w in sorted(merged.items()) if w > 0)


def layout_lower_bound(inst: LayoutInstance) -> int:
    """Separation bound on the doubled cost: non-overlapping centres are this far apart."""
    return sum(w * min(inst.dims[i][0] + inst.dims[j][0], inst.dims[i][1] + inst.dims[j][1])
               for i, j, w in inst.edges)


def layout_floor(inst: LayoutInstance) -> int:
    """The separation bound raised on chains of alike rectangles by what the grid's size
    forces them to turn (check.separation_bound2): no packing of the instance costs less."""
    return separation_bound2(inst.rows, inst.cols, inst.dims, inst.edges)


def layout_cost(inst: LayoutInstance, spots: Sequence[Position]) -> int:
    """Sum of weight x doubled Manhattan distance between centres."""
    return cost(inst.dims, inst.edges, spots)


# -- variables and constraints -----------------------------------------------------------------


@dataclass
class LayoutVars:
    row: list[cp_model.IntVar]
    col: list[cp_model.IntVar]
    row_iv: list[cp_model.IntervalVar]
    col_iv: list[cp_model.IntervalVar]
    drow: list[cp_model.IntVar] = field(default_factory=list)  # doubled, per edge
    dcol: list[cp_model.IntVar] = field(default_factory=list)


def layout_variables(model: cp_model.CpModel, inst: LayoutInstance) -> LayoutVars:
    row = [model.new_int_var(lo, hi, f"row[{i}]") for i, (lo, hi) in enumerate(inst.row_range)]
    col = [model.new_int_var(lo, hi, f"col[{i}]") for i, (lo, hi) in enumerate(inst.col_range)]
    row_iv = [model.new_fixed_size_interval_var(row[i], h, f"rows[{i}]")
              for i, (h, _) in enumerate(inst.dims)]
    col_iv = [model.new_fixed_size_interval_var(col[i], w, f"cols[{i}]")
              for i, (_, w) in enumerate(inst.dims)]
    v = LayoutVars(row, col, row_iv, col_iv)
    for e, (i, j, _) in enumerate(inst.edges):
        v.drow.append(model.new_int_var(0, 2 * inst.rows, f"drow[{e}:{i},{j}]"))
        v.dcol.append(model.new_int_var(0, 2 * inst.cols, f"dcol[{e}:{i},{j}]"))
    return v


def add_no_overlap(model: cp_model.CpModel, inst: LayoutInstance, v: LayoutVars) -> None:
    model.add_no_overlap_2d(v.col_iv, v.row_iv)


def add_edge_distances(model: cp_model.CpModel, inst: LayoutInstance, v: LayoutVars) -> None:
    """d >= |centre difference| (doubled) both ways, and the separation cut on dr + dc."""
    for e, (i, j, _) in enumerate(inst.edges):
        (hi, wi), (hj, wj) = inst.dims[i], inst.dims[j]
        row_diff = 2 * v.row[i] + hi - 2 * v.row[j] - hj
        col_diff = 2 * v.col[i] + wi - 2 * v.col[j] - wj
        model.add(v.drow[e] >= row_diff)
        model.add(v.drow[e] >= -row_diff)
        model.add(v.dcol[e] >= col_diff)
        model.add(v.dcol[e] >= -col_diff)
        model.add(v.drow[e] + v.dcol[e] >= min(hi + hj, wi + wj))


# -- objective and hint ------------------------------------------------------------------------


def layout_objective(inst: LayoutInstance, v: LayoutVars) -> cp_model.LinearExprT:
    return sum(w * (v.drow[e] + v.dcol[e]) for e, (_, _, w) in enumerate(inst.edges))


def add_objective_floor(model: cp_model.CpModel, inst: LayoutInstance, v: LayoutVars) -> None:
    """The floor (separation bound, raised on chains) as one row, so reaching it proves
    optimality at once."""
    model.add(layout_objective(inst, v) >= layout_floor(inst))


def hint_layout(model: cp_model.CpModel, inst: LayoutInstance, v: LayoutVars) -> None:
    """A complete hint: positions and the distances they imply."""
    if inst.hint is None:
        return
    for i, (r, c) in enumerate(inst.hint):
        model.add_hint(v.row[i], r)
        model.add_hint(v.col[i], c)
    for e, (i, j, _) in enumerate(inst.edges):
        (ri, ci), (hi, wi) = inst.hint[i], inst.dims[i]
        (rj, cj), (hj, wj) = inst.hint[j], inst.dims[j]
        model.add_hint(v.drow[e], abs(2 * ri + hi - 2 * rj - hj))
        model.add_hint(v.dcol[e], abs(2 * ci + wi - 2 * cj - wj))


# -- solve and extract -------------------------------------------------------------------------


@dataclass(frozen=True)
class LayoutResult:
    spots: tuple[Position, ...] | None
    status: str
    objective: int | None
    bound: float
    wall_time_s: float
    note: str = ""


def solve_layout(
    inst: LayoutInstance, limit: float, clock: Clock, *, minimize: bool = True
) -> LayoutResult:
    """Solve one layout; `minimize=False` only looks for a packing."""
    model = cp_model.CpModel()
    v = layout_variables(model, inst)
    add_no_overlap(model, inst, v)
    add_edge_distances(model, inst, v)
    if minimize:
        add_objective_floor(model, inst, v)
        model.minimize(layout_objective(inst, v))
    hint_layout(model, inst, v)
    out = run(model, limit, clock)
    if not out.solved:
        return LayoutResult(None, out.name, None, 0.0, out.wall_time)
    spots = tuple((out.value(r), out.value(c)) for r, c in zip(v.row, v.col, strict=True))
    if not minimize:
        return LayoutResult(spots, out.name, None, 0.0, out.wall_time)
    return LayoutResult(spots, out.name, int(out.objective), out.bound, out.wall_time)
