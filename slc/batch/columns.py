"""Arrays in Arrow columns: numpy arrays of any shape as flat `large_list`
columns, and back, without copies on the way out."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def flat_list_column(arrays: list[np.ndarray | None], dtype: type[np.floating]) -> pa.Array:
    """Arrays of any shape, flattened to `dtype` -> a large_list column; None becomes null."""
    flat = [np.zeros(0, dtype) if a is None else np.asarray(a, dtype).reshape(-1) for a in arrays]
    offsets = np.zeros(len(flat) + 1, dtype=np.int64)
    np.cumsum([len(f) for f in flat], out=offsets[1:])
    values = np.concatenate(flat) if flat else np.zeros(0, dtype)
    nulls = pa.array([a is None for a in arrays], pa.bool_())
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.from_numpy_dtype(dtype)), mask=nulls)


def arrays_of(column: pa.ChunkedArray, width: int) -> list[np.ndarray | None]:
    """A large_list column -> `[n, width]` views of its values (no copy); null -> None."""
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy()
    values = array.values.to_numpy(zero_copy_only=False)
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    return [
        values[offsets[i] : offsets[i + 1]].reshape(-1, width) if valid[i] else None for i in range(len(array))
    ]
