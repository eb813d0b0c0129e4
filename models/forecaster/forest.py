"""A LightGBM booster as flat arrays, scored by a compiled loop: what prediction holds for
each loaded model.

Why not the `lightgbm.Booster` itself: a cycle scores each client's 36 boosters (6 metrics,
3 quantiles, the horizon and the reach) on a dozen rows each, and `Booster.predict` spends
about 55 us per call setting up before it walks 14 rows (measured: 72 us a call, 17 of them
walking the trees); a loaded booster also holds its trees as C++ objects, ~0.94 MB a client,
which capped how many clients' models a process could keep between cycles. Here a call
costs ~5-10 us and a client's boosters ~0.3 MB (indices in 16 bits, columns in 8).

The walk is LightGBM's own (`Tree::GetLeaf`, `NumericalDecision` in its `tree.h`): a
missing value takes the node's default side when its missing type says so, NaN is zero for
a node not expecting NaN, inputs within 1e-35f of zero are zero (what `PredictForMat` does
to dense rows), and the outputs of the trees are added in order from zero. Thresholds and
leaf values are parsed from the model text with correct rounding, as LightGBM parses them,
so the scores equal the booster's bit for bit (tests/models/test_forest.py). Only what our
boosters use is supported: numerical splits, no linear trees; any other text is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numba
import numpy as np

# The per-tree fields the walk reads, and what it cannot walk (a "\n" prefix, not "^" with
# re.MULTILINE: the literal prefix lets the regex engine skip ahead, 3x faster here).
_FIELD = re.compile(
    r"\n(num_leaves|split_feature|threshold|decision_type|left_child|right_child|leaf_value)"
    r"=([^\n]*)"
)
_UNSUPPORTED = re.compile(r"\n(?:num_cat|is_linear)=[^0\n]")
_COLUMNS = re.compile(r"\nmax_feature_idx=(\d+)")
# LightGBM's kZeroThreshold, within which a value is zero: a float literal, 1e-35f (its
# bins around zero have this bound as threshold, so the rounding matters).
_ZERO = float(np.float32(1e-35))


@dataclass(frozen=True, eq=False, slots=True)
class Forest:
    """The trees of one booster: internal nodes and leaves of all trees in flat arrays.

    A child (and a root) is a node index when >= 0, else `~leaf` (a leaf index). Indices
    are kept in the smallest type that holds them (`_index_type`): a client's 36 forests
    are held for as long as its model is cached, 10,000 clients at a time.
    """

    feature: np.ndarray  # uint8 (int32 past 256 columns), per node: the column it splits on
    threshold: np.ndarray  # float64, per node: left when the value is <= it
    decision: np.ndarray  # uint8, per node: LightGBM's decision type bits
    left: np.ndarray  # int16 (int32 past 32,767 nodes or leaves), per node
    right: np.ndarray  # as `left`
    leaf_value: np.ndarray  # float64, per leaf
    roots: np.ndarray  # as `left`, per tree, in order
    columns: int  # input columns the booster was trained on

    @classmethod
    def from_model_text(cls, text: str) -> Forest:
        """The forest of a LightGBM model text (`Booster.model_to_string`, compacted or not)."""
        columns = _COLUMNS.search(text)
        found: dict[str, list[str]] = {}
        for key, value in _FIELD.findall(text):
            found.setdefault(key, []).append(value)
        if columns is None or "num_leaves" not in found:
            raise ValueError("not a LightGBM model text: no trees or no feature count")
        if _UNSUPPORTED.search(text):
            raise ValueError("categorical splits and linear trees are not supported")

        def numbers(key: str, dtype: type) -> np.ndarray:
            # One C parse per field for all trees; correctly rounded, as LightGBM's parser.
            return np.fromstring(" ".join(found.get(key, [])), dtype=dtype, sep=" ")

        leaves = numbers("num_leaves", np.int64)
        inner = leaves - 1  # a tree of one leaf has no node
        node_start = np.concatenate([[0], np.cumsum(inner)[:-1]])
        leaf_start = np.concatenate([[0], np.cumsum(leaves)[:-1]])
        tree_of_node = np.repeat(np.arange(len(leaves)), inner)
        nodes, leaf_value = int(inner.sum()), numbers("leaf_value", np.float64)
        fields = {k: numbers(k, np.int64) for k in ("split_feature", "left_child", "right_child")}
        threshold = numbers("threshold", np.float64)
        decision = numbers("decision_type", np.int64)
        if any(len(a) != nodes for a in (*fields.values(), threshold, decision)) or len(
            leaf_value
        ) != int(leaves.sum()):
            raise ValueError("a LightGBM model text whose trees do not add up")

        index = _index_type(max(nodes, len(leaf_value)))

        def global_child(local: np.ndarray) -> np.ndarray:
            # Per-tree child indices to indices into the flat arrays (leaves stay `~leaf`).
            node_base, leaf_base = node_start[tree_of_node], leaf_start[tree_of_node]
            return np.where(local >= 0, local + node_base, ~(~local + leaf_base)).astype(index)

        columns_count = int(columns.group(1)) + 1
        return cls(
            feature=fields["split_feature"].astype(np.uint8 if columns_count <= 256 else np.int32),
            threshold=threshold,
            decision=decision.astype(np.uint8),
            left=global_child(fields["left_child"]),
            right=global_child(fields["right_child"]),
            leaf_value=leaf_value,
            roots=np.where(inner > 0, node_start, ~leaf_start).astype(index),
            columns=columns_count,
        )

    def predict(self, matrix: np.ndarray, num_threads: int = 1) -> np.ndarray:
        """The booster's raw score of each row (`Booster.predict` of a regression model;
        `num_threads` is accepted for its signature: the walk is one thread)."""
        rows = np.ascontiguousarray(matrix, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.columns:
            raise ValueError(
                f"the model expects {self.columns} input columns, got shape {rows.shape}"
            )
        out = np.empty(rows.shape[0], dtype=np.float64)
        _walk(
            rows,
            self.feature,
            self.threshold,
            self.decision,
            self.left,
            self.right,
            self.leaf_value,
            self.roots,
            out,
        )
        return out

    @property
    def nbytes(self) -> int:
        return sum(
            a.nbytes
            for a in (self.feature, self.threshold, self.decision, self.left, self.right)
            + (self.leaf_value, self.roots)
        )


def _index_type(count: int) -> type:
    """The smallest signed integer type for indices below `count` and their `~index`."""
    return np.int16 if count <= 2**15 else np.int32


@numba.njit(cache=True, nogil=True)
def _walk(rows, feature, threshold, decision, left, right, leaf_value, roots, out):
    """Every row down every tree, the leaf values added in tree order (see the docstring)."""
    for r in range(rows.shape[0]):
        total = 0.0
        for tree in range(roots.shape[0]):
            node = roots[tree]
            while node >= 0:
                value = rows[r, feature[node]]
                if -_ZERO <= value <= _ZERO:
                    value = 0.0
                bits = decision[node]
                missing = (bits >> 2) & 3  # 0 none, 1 zero, 2 NaN
                if np.isnan(value) and missing != 2:
                    value = 0.0
                if (missing == 1 and value == 0.0) or (missing == 2 and np.isnan(value)):
                    node = left[node] if bits & 2 else right[node]
                elif value <= threshold[node]:
                    node = left[node]
                else:
                    node = right[node]
            total += leaf_value[~node]
        out[r] = total
