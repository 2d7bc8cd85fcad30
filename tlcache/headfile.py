"""A fitted head as arrays plus JSON: a file that loads without running any code of its own.

A pickle (``joblib.dump``) names functions that run when it is loaded: a run folder someone shares, downloads or
commits could run anything on ``tlcache predict``. Here a head is one ``.npz`` file (``numpy.savez``, read back
with ``allow_pickle=False``): its arrays, and one entry holding the structure as JSON. The structure names objects
only by classes of an allow-list (:data:`ALLOWED`: the estimators tlcache's heads are built of); an object is
rebuilt as ``cls.__new__(cls)`` plus ``__setstate__`` of the state ``__getstate__`` gave, the way pickle would
rebuild it, but no other class or function can be named. scikit-learn's secure format (``skops.io``) does the same
with a wider allow-list, but imports every estimator scikit-learn has (and torch through it) when loaded: 2.8 s
that a head's own fit takes a tenth of.

Values: None, bool, int, float (inf and nan included), str, lists, tuples, dicts with string keys, numpy arrays
(no object arrays), numpy scalars and dtypes, and the allowed classes' instances. Anything else is refused when
the head is written, so what is written can be read.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

FORMAT = "tlcache-head/1"
_STRUCTURE = "__structure__"
# State that fitting needs and predicting does not, left out of the file: SGD's loss is a compiled object that
# could only be rebuilt by calling it.
_FIT_ONLY = {
    "sklearn.linear_model._stochastic_gradient.SGDClassifier": ("_loss_function_",),
    "tlcache.linear.OvrLogisticSGD": ("_loss_function_",),
}


def _allowed() -> dict[str, type]:
    """The classes a head file may name, by ``module.qualname`` (imported on first use)."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import SGDClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler
    from sklearn.svm import SVC

    from tlcache.calibration import DecisionCalibrator
    from tlcache.kernel_svm import SweptKernelSVC
    from tlcache.knn import SweptKNN
    from tlcache.linear import OvrLogisticSGD, SweptLogisticRegression
    from tlcache.linear_svm import LinearSVM, SweptLinearSVM
    from tlcache.mlp import MLPHead, SweptMLP
    from tlcache.scaling import DropDeadFeatures
    from tlcache.sweep import SweptClassifier

    classes = (
        Pipeline,
        StandardScaler,
        Normalizer,
        SGDClassifier,
        OvrLogisticSGD,
        SVC,
        KNeighborsClassifier,
        IsotonicRegression,
        DecisionCalibrator,
        DropDeadFeatures,
        SweptClassifier,
        SweptKernelSVC,
        SweptKNN,
        SweptLogisticRegression,
        SweptLinearSVM,
        LinearSVM,
        SweptMLP,
        MLPHead,
    )
    return {_name(cls): cls for cls in classes}


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class HeadFileError(ValueError):
    """The file is not a head this version of tlcache can read safely."""


def to_bytes(head: Any) -> bytes:
    """The head file of ``head``; TypeError when it holds a value a head file cannot (see the module's docstring).
    The caller writes the bytes (whole, under a name of their digest: see tlcache.runs.write_head)."""
    allowed = _allowed()
    arrays: dict[str, np.ndarray] = {}

    def encode(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, str)):  # numpy's integers are no ints: scalars below
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"float": repr(value)}
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise TypeError("an array of Python objects")
            arrays[f"a{len(arrays)}"] = value
            return {"array": f"a{len(arrays) - 1}"}
        if isinstance(value, np.generic):
            return {"scalar": value.dtype.str, "value": encode(value.item())}
        if isinstance(value, np.dtype):
            return {"dtype": value.str}
        if isinstance(value, (list, tuple)):
            items = [encode(item) for item in value]
            return items if isinstance(value, list) else {"tuple": items}
        if isinstance(value, dict):
            if not all(isinstance(key, str) for key in value):
                raise TypeError("a dict with keys that are not strings")
            return {"dict": {key: encode(item) for key, item in value.items()}}
        if _name(type(value)) not in allowed:
            raise TypeError(f"an object of class {_name(type(value))}, which a head file cannot hold")
        name = _name(type(value))
        state = {key: item for key, item in (value.__getstate__() or {}).items() if key not in _FIT_ONLY.get(name, ())}
        return {"object": name, "state": encode(state)}

    text = json.dumps({"format": FORMAT, "head": encode(head)}, allow_nan=False)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, **{_STRUCTURE: np.frombuffer(text.encode("utf-8"), dtype=np.uint8)})
    return buffer.getvalue()


def load(path: Path | BinaryIO) -> Any:
    """The head in ``path`` (a file name or an open binary file); HeadFileError when the file is not a head file or
    names anything not allowed."""
    allowed = _allowed()
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as exc:  # not a zip, a damaged member, an object array
        raise HeadFileError(f"not a readable head file ({type(exc).__name__}: {exc})") from None
    try:
        structure = json.loads(arrays.pop(_STRUCTURE).tobytes().decode("utf-8"))
    except (KeyError, ValueError) as exc:
        raise HeadFileError(f"its structure is missing or damaged ({exc})") from None
    if not isinstance(structure, dict) or structure.get("format") != FORMAT:
        raise HeadFileError(f"it is not in the format {FORMAT}")

    def decode(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, list):
            return [decode(item) for item in value]
        if not isinstance(value, dict) or len(value) not in (1, 2):
            raise HeadFileError(f"an entry of its structure is not a value: {str(value)[:80]}")
        kind = next(iter(value))
        if kind == "float" and value[kind] in ("inf", "-inf", "nan"):
            return float(value[kind])
        if kind == "array" and value[kind] in arrays:
            return arrays[value[kind]]
        if kind == "scalar":
            return np.dtype(value["scalar"]).type(decode(value["value"]))
        if kind == "dtype":
            return np.dtype(value[kind])
        if kind == "tuple" and isinstance(value[kind], list):
            return tuple(decode(item) for item in value[kind])
        if kind == "dict" and isinstance(value[kind], dict):
            return {key: decode(item) for key, item in value[kind].items()}
        if kind == "object" and isinstance(value.get("state"), dict):
            cls = allowed.get(value["object"])
            if cls is None:
                raise HeadFileError(f"it names the class {str(value['object'])[:80]}, which tlcache does not load")
            state = decode(value["state"])
            obj = cls.__new__(cls)
            if hasattr(obj, "__setstate__"):
                obj.__setstate__(state)
            else:
                obj.__dict__.update(state)
            return obj
        raise HeadFileError(f"an entry of its structure is not a value: {str(value)[:80]}")

    try:
        return decode(structure.get("head"))
    except HeadFileError:
        raise
    except Exception as exc:  # a well-formed file whose values do not fit the classes they are given to
        raise HeadFileError(f"its values do not make a head ({type(exc).__name__}: {exc})") from None
