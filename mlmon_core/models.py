"""The production model behind a log: loading its file safely and computing its SHAP values.

Supported files (``[model] path`` in mlmon.toml):

- ``.skops``: scikit-learn estimators and pipelines saved with ``skops.io.dump``. Only types from
  the scikit-learn, numpy, scipy, LightGBM and XGBoost modules are trusted; any other type in the
  file is refused by name (``trust = true`` trusts every type in the file).
- ``.txt``: a LightGBM text model (``Booster.save_model``); needs the ``lightgbm`` package.
- ``.json`` / ``.ubj``: an XGBoost model (``Booster.save_model``); needs the ``xgboost`` package.
- ``.pkl`` / ``.pickle`` / ``.joblib``: only with ``trust = true``, because loading a pickle runs
  whatever code the file holds.

SHAP values are always given per *logged feature*. Tree models (scikit-learn tree ensembles,
LightGBM, XGBoost) go through ``shap.TreeExplainer``. For a scikit-learn ``Pipeline`` whose last
step is a tree model, the tree is explained on the preprocessed columns and the values of the
columns that one logged feature produced (e.g. its one-hot columns) are summed back to that
feature: SHAP values are additive, so a group's sum is exactly the attribution of the group.
Linear models (scikit-learn ``linear_model``, alone or at the end of such a pipeline) go through
``shap.LinearExplainer`` with a background sample of the reference window, the same way. Any
other model is explained whole, in the logged feature space, with SHAP's model-agnostic
permutation explainer over a small background sample. Each explanation states its output space
(log-odds, probability, ...), and ``base_value + sum(shap) = model output`` holds in that space.
"""

from __future__ import annotations

import hashlib
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mlmon_core.errors import ConfigError, SourceError

TRUSTED_MODULES = ("sklearn", "numpy", "scipy", "lightgbm", "xgboost")
SKOPS_SUFFIXES = (".skops",)
LIGHTGBM_SUFFIXES = (".txt",)
XGBOOST_SUFFIXES = (".json", ".ubj")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
DEFAULT_MAX_EVALS_PER_FEATURE = 10  # permutation explainer: 10 evaluations per feature and row
ADDITIVITY_TOLERANCE = 1e-4
_UNNAMED = re.compile(r"^(Column_\d+|f\d+|x\d+)$")


# ---------------------------------------------------------------- loading

@dataclass(frozen=True)
class LoadedModel:
    """A model file, loaded: what kind it is, the estimator, and the features it was trained on."""

    path: Path
    flavor: str                          # "sklearn", "lightgbm" or "xgboost"
    estimator: Any
    features: tuple[str, ...] | None     # None when the file does not name its features
    n_features: int | None
    digest: str                          # sha256 of the file's bytes

    @property
    def type_name(self) -> str:
        """The estimator's class, e.g. ``Pipeline(HistGradientBoostingClassifier)``."""
        final = final_estimator(self.estimator)
        outer = type(self.estimator).__name__
        return outer if final is self.estimator else f"{outer}({type(final).__name__})"

    def to_json(self) -> dict[str, Any]:
        """Plain form for reports."""
        return {"path": str(self.path), "flavor": self.flavor, "type": self.type_name,
                "features": list(self.features) if self.features else None,
                "n_features": self.n_features, "digest": self.digest}


_LOADED: dict[tuple, LoadedModel] = {}
_LOADED_LOCK = threading.Lock()


def model_file(path: str | Path) -> Path:
    """The model file ``[model] path`` names; ``ConfigError`` when it does not exist."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"[model] path: model file {file} does not exist")
    return file


_DIGESTS: dict[tuple, str] = {}


def model_digest(path: str | Path) -> str:
    """``file_digest`` of the model file, remembered per (path, size, modification time)."""
    file = model_file(path)
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_digest(file)
    return _DIGESTS[key]


def file_digest(path: Path) -> str:
    """The sha256 of a file's bytes (the model's identity in the attribution cache)."""
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def load_model(path: str | Path, trust: bool = False) -> LoadedModel:
    """Load a model file; ``ConfigError`` naming the file for anything that prevents it.

    Loads are remembered per (path, size, modification time, trust), so a page can ask again.
    """
    file = model_file(path)
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns, bool(trust))
    with _LOADED_LOCK:
        if key in _LOADED:
            return _LOADED[key]
    flavor, estimator = _load_estimator(file, trust)
    features, n_features = model_features(estimator, flavor)
    loaded = LoadedModel(file, flavor, estimator, features, n_features, file_digest(file))
    with _LOADED_LOCK:
        _LOADED[key] = loaded
    return loaded


def _load_estimator(file: Path, trust: bool) -> tuple[str, Any]:
    suffix = file.suffix.lower()
    if suffix in SKOPS_SUFFIXES:
        estimator = _guarded(file, "skops", lambda: _load_skops(file, trust))
    elif suffix in LIGHTGBM_SUFFIXES:
        lightgbm = _optional("lightgbm", file)
        estimator = _guarded(file, "LightGBM text", lambda: lightgbm.Booster(model_file=str(file)))
    elif suffix in XGBOOST_SUFFIXES:
        xgboost = _optional("xgboost", file)
        estimator = _guarded(file, "XGBoost", lambda: xgboost.Booster(model_file=str(file)))
    elif suffix in PICKLE_SUFFIXES:
        if not trust:
            raise ConfigError(
                f"[model] path: {file} is a pickle/joblib file, and loading one runs any code it "
                "holds. Save the model with skops (skops.io.dump) instead, or, only if you trust "
                "where the file comes from, set trust = true under [model]")
        import joblib

        estimator = _guarded(file, "pickle/joblib", lambda: joblib.load(file))
    else:
        raise ConfigError(
            f"[model] path: {file}: unsupported model file type {suffix or '(no extension)'!r}; "
            "use .skops (scikit-learn), .txt (LightGBM), .json/.ubj (XGBoost), or .pkl/.joblib "
            "with trust = true")
    return _flavor(file, estimator), estimator


def _guarded(file: Path, kind: str, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure is a bad file, said plainly
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"[model] path: {file} could not be loaded as a {kind} model: "
                          f"{message[:300]}") from None


def _optional(module: str, file: Path) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"[model] path: install {module} to load {file} "
                          f"(pip install {module})") from None


def _load_skops(file: Path, trust: bool) -> Any:
    import skops.io

    untrusted = skops.io.get_untrusted_types(file=str(file))
    if not trust:
        refused = [t for t in untrusted if t.split(".", 1)[0] not in TRUSTED_MODULES]
        if refused:
            raise ConfigError(
                f"[model] path: {file} contains types outside {', '.join(TRUSTED_MODULES)}: "
                f"{', '.join(refused)}. Loading them could run their code; set trust = true under "
                "[model] only if you trust the file")
    return skops.io.load(str(file), trusted=untrusted)


def _flavor(file: Path, estimator: Any) -> str:
    module = type(estimator).__module__.split(".", 1)[0]
    name = type(estimator).__name__
    if module == "lightgbm" and name == "Booster":
        return "lightgbm"
    if module == "xgboost" and name == "Booster":
        return "xgboost"
    if hasattr(estimator, "predict") and hasattr(estimator, "fit"):
        _check_predictor(file, estimator)
        return "sklearn"
    raise ConfigError(f"[model] path: {file} holds a {type(estimator).__module__}.{name}, which is "
                      "not a supported model: expected a scikit-learn estimator or pipeline, a "
                      "LightGBM Booster or an XGBoost Booster")


def _check_predictor(file: Path, estimator: Any) -> None:
    """A scikit-learn model must be a classifier or a regressor (not e.g. a clustering)."""
    from sklearn.base import is_classifier, is_regressor

    try:
        predicts = is_classifier(estimator) or is_regressor(estimator)
    except Exception:  # noqa: BLE001 - third-party estimators without sklearn tags
        predicts = True
    if not predicts:
        final = final_estimator(estimator)
        raise ConfigError(f"[model] path: {file} holds a {type(final).__name__}, which is neither a "
                          "classifier nor a regressor; mlmon explains models that predict the "
                          "log's target")


def final_estimator(estimator: Any) -> Any:
    """The last step of a scikit-learn Pipeline, or the estimator itself."""
    steps = getattr(estimator, "steps", None)
    return steps[-1][1] if steps else estimator


def model_features(estimator: Any, flavor: str) -> tuple[tuple[str, ...] | None, int | None]:
    """The feature names a model was trained on (None when unnamed) and how many it takes."""
    if flavor == "lightgbm":
        names, count = list(estimator.feature_name()), estimator.num_feature()
    elif flavor == "xgboost":
        names, count = list(estimator.feature_names or []), estimator.num_features()
    else:
        raw = getattr(estimator, "feature_names_in_", None)
        names = [str(n) for n in raw] if raw is not None else []
        count = getattr(estimator, "n_features_in_", None) or (len(names) or None)
    if not names:
        return None, count
    return tuple(names), len(names)


# ---------------------------------------------------------------- matching the log

@dataclass(frozen=True)
class ModelInputs:
    """Which log columns feed the model, in the model's order, and what does not match."""

    features: tuple[str, ...]
    unused: tuple[str, ...]          # log features the model does not take
    notes: tuple[str, ...] = ()


def match_inputs(model: LoadedModel, log_columns: Sequence[str],
                 log_features: Sequence[str]) -> ModelInputs:
    """Map the model's inputs onto the log's columns; ``SourceError`` naming what is missing.

    Names such as ``Column_0`` (LightGBM) or ``f0`` (XGBoost) that the log does not have are the
    libraries' defaults for unnamed features: the log's features are then taken in order.
    """
    names = model.features
    if names is not None and not all(n in log_columns for n in names) and \
            all(_UNNAMED.match(n) for n in names):
        names = None
    if names is None:
        count = model.n_features
        if count is not None and count != len(log_features):
            raise SourceError(
                f"model file {model.path} takes {count} unnamed features but the log has "
                f"{len(log_features)} ({', '.join(log_features)}); save the model fitted on a "
                "DataFrame so that it names its features, or list them in [columns] features")
        note = ("the model file does not name its features; the log's features were assumed to "
                "be in the model's order: " + ", ".join(log_features))
        return ModelInputs(tuple(log_features), (), (note,))
    missing = [f for f in names if f not in log_columns]
    unused = tuple(f for f in log_features if f not in names)
    if missing:
        extra = f"; the log has features the model does not take: {', '.join(unused)}" if unused \
            else ""
        raise SourceError(
            f"model file {model.path} needs column(s) {', '.join(missing)}, which the log does not "
            f"have{extra}. Is [model] path the model that made this log?")
    notes = (f"the model does not use the logged feature(s) {', '.join(unused)}",) if unused else ()
    return ModelInputs(tuple(names), unused, notes)


# ---------------------------------------------------------------- explaining

@dataclass
class Explained:
    """SHAP values for a batch of rows: ``base + values.sum(axis=1) == output`` per row."""

    values: np.ndarray       # (rows, features)
    base: np.ndarray         # (rows,)
    output: np.ndarray       # (rows,) the model's own output in ``output_space``


@dataclass
class ModelExplainer:
    """Explains one output of a model (the positive class, or the prediction) per logged feature.

    ``method`` is "tree" (``shap.TreeExplainer``), "linear" (``shap.LinearExplainer``, for linear
    models) or "permutation" (SHAP's model-agnostic permutation explainer). The last two need
    ``background``: rows of the reference window in the log's columns, or a function returning
    them (called only when needed).
    """

    model: LoadedModel
    features: tuple[str, ...]
    task: str
    positive_label: Any = None
    background: Any = None
    max_evals: int | None = None
    seed: int = 0
    method: str = field(init=False)
    output_space: str | None = field(init=False, default=None)
    explained_class: Any = field(init=False, default=None)
    grouped: bool = field(init=False, default=False)
    _additive: Any = field(init=False, default=None, repr=False)
    _pre: Any = field(init=False, default=None, repr=False)
    _groups: np.ndarray | None = field(init=False, default=None, repr=False)
    _class_index: int | None = field(init=False, default=None, repr=False)
    _negate: bool = field(init=False, default=False, repr=False)
    _codec: Any = field(init=False, default=None, repr=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self._choose_class()
        estimator = self.model.estimator
        final = final_estimator(estimator)
        self._additive = _tree_explainer(final, self.model.flavor)
        if self._additive is not None:
            self.method = "tree"
        elif _is_linear(final) and self.task in ("binary", "regression"):
            self.method = "linear"
        else:
            self.method = "permutation"
        if self.method != "permutation" and final is not estimator:
            self._pre = estimator[:-1]

    @property
    def description(self) -> str:
        """The method in words, e.g. ``tree SHAP (one-hot columns summed per feature)``."""
        words = {"tree": "tree SHAP (shap.TreeExplainer)",
                 "linear": "linear SHAP (shap.LinearExplainer, interventional)",
                 "permutation": "permutation SHAP (model-agnostic, shap.explainers.Permutation)"}
        text = words[self.method]
        return text + ", preprocessed columns summed per logged feature" if self.grouped else text

    # -- which output

    def _choose_class(self) -> None:
        if self.task == "regression":
            return
        classes = _classes(self.model)
        if classes is None:
            self._class_index = _booster_class_index(self.model, self.positive_label)
            self.explained_class = self.positive_label if self.positive_label is not None else 1
            return
        index = _index_of(classes, self.positive_label)
        if index is None:
            if self.positive_label is not None:
                raise SourceError(f"positive label {self.positive_label!r} is not a class of model "
                                  f"{self.model.path} (classes: {', '.join(map(str, classes))})")
            index = len(classes) - 1
        self._class_index = index
        self.explained_class = _plain(classes[index])
        self._negate = len(classes) == 2 and index == 0

    # -- the model's input

    def prepare(self, frame) -> Any:
        """The model's input table for rows of the log (columns in the model's order)."""
        missing = [f for f in self.features if f not in frame.columns]
        if missing:
            raise SourceError(f"model file {self.model.path} needs column(s) {', '.join(missing)}")
        data = frame[list(self.features)].copy()
        if self.model.features is not None and len(self.model.features) == len(self.features):
            data.columns = list(self.model.features)   # default names (Column_0, f0) by position
        if self.model.flavor == "lightgbm":
            return _lightgbm_frame(self.model.estimator, data)
        if self.model.flavor == "xgboost":
            return _xgboost_frame(self.model.estimator, data)
        return data if self.model.features is not None else data.to_numpy()

    def score(self, frame) -> np.ndarray:
        """The model's probability of the explained class, or its prediction (regression)."""
        return self._probability(self.prepare(frame))

    def _probability(self, data) -> np.ndarray:
        estimator, flavor = self.model.estimator, self.model.flavor
        try:
            if flavor == "xgboost":
                out = estimator.predict(_dmatrix(data))
            elif flavor == "lightgbm":
                out = estimator.predict(data)
            elif self.task == "regression" or not hasattr(estimator, "predict_proba"):
                out = estimator.predict(data)
            else:
                out = estimator.predict_proba(data)
        except SourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - the log's rows do not fit the model
            raise SourceError(f"model file {self.model.path} cannot score the log's rows: "
                              f"{_first_line(exc)}") from None
        out = np.asarray(out, dtype=float)
        if out.ndim == 2:
            return out[:, self._class_index if self._class_index is not None else -1]
        if self._negate and flavor != "sklearn":
            return 1.0 - out
        return out

    def _background(self):
        background = self.background() if callable(self.background) else self.background
        if background is None or len(background) == 0:
            raise SourceError(
                f"model file {self.model.path} is explained with {self.method} SHAP, which needs "
                "background rows from the reference window, and the reference window is empty")
        self.background = background
        return background

    # -- SHAP

    def explain(self, frame) -> Explained:
        """SHAP values per logged feature for these rows (in the model's feature order)."""
        from threadpoolctl import threadpool_limits

        if len(frame) == 0:
            empty = np.zeros(0)
            return Explained(np.zeros((0, len(self.features))), empty, empty)
        # Small batches: one thread avoids OpenMP oversubscription when the machine is busy.
        with self._lock, threadpool_limits(limits=1, user_api="openmp"):
            if self.method != "permutation":
                explained = self._explain_additive(frame)
                if explained is not None:
                    return explained
            return self._explain_permutation(frame)

    def _explain_additive(self, frame) -> Explained | None:
        data = self.prepare(frame)
        inputs = data
        if self._pre is not None:
            inputs = self._transform(data)
            if self._groups is None:
                self._groups = _output_groups(self._pre, data, self.features, inputs)
                if self._groups is None:      # preprocessing mixes features: explain it whole
                    self._additive, self._pre, self.method = None, None, "permutation"
                    return None
                self.grouped = True
        if self.method == "linear" and self._additive is None:
            self._additive = self._linear_explainer()
        if self.model.flavor == "xgboost":
            shap_input = _dmatrix(data)
        elif self.model.flavor == "lightgbm":
            shap_input = data
        else:
            shap_input = _dense(inputs)
        if self.method == "tree":
            with warnings.catch_warnings():   # shap announces its LightGBM output format
                warnings.filterwarnings("ignore", message="LightGBM binary classifier")
                values = self._additive.shap_values(shap_input, check_additivity=False)
        else:
            values = self._additive.shap_values(shap_input)
        values, base = self._pick_output(values, self._additive.expected_value, len(frame))
        if self._groups is not None:
            values = _sum_groups(values, self._groups, len(self.features))
        output = self._own_output(data, inputs, base + values.sum(axis=1))
        return Explained(values, base, output)

    def _transform(self, data) -> Any:
        try:
            return self._pre.transform(data)
        except Exception as exc:  # noqa: BLE001 - the log's rows do not fit the preprocessing
            raise SourceError(f"model file {self.model.path}: its preprocessing cannot read the "
                              f"log's rows: {_first_line(exc)}") from None

    def _linear_explainer(self) -> Any:
        import shap

        background = self.prepare(self._background())
        if self._pre is not None:
            background = self._transform(background)
        matrix = _dense(background)
        masker = shap.maskers.Independent(matrix, max_samples=len(matrix))
        return shap.LinearExplainer(final_estimator(self.model.estimator), masker)

    def _pick_output(self, values: Any, expected: Any, rows: int) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(values, list):
            values = np.stack(values, axis=-1)
        values = np.asarray(values, dtype=float)
        expected = np.atleast_1d(np.asarray(expected, dtype=float))
        if values.ndim == 3:
            index = self._class_index if self._class_index is not None else values.shape[2] - 1
            values, expected = values[:, :, index], expected[index if expected.size > 1 else 0]
        else:
            expected = expected[-1] if expected.size > 1 else expected[0]
            if self._negate:   # a single output is the second class's score
                values, expected = -values, -expected
        return values, np.full(rows, float(expected))

    def _own_output(self, data, inputs, reconstructed: np.ndarray) -> np.ndarray:
        """The model's own output that the SHAP values add up to; names its space."""
        for space, output in self._output_candidates(data, inputs):
            if output is not None and _close(output, reconstructed):
                self.output_space = space
                return output
        self.output_space = self.output_space or "raw model score"
        return reconstructed

    def _output_candidates(self, data, inputs) -> Iterator[tuple[str, np.ndarray]]:
        """The model's outputs that SHAP values may add up to; the known space first."""
        candidates = self._candidate_outputs(data, inputs)
        if self.output_space is not None:
            candidates.sort(key=lambda item: item[0] != self.output_space)
        for space, compute in candidates:
            yield space, compute()

    def _candidate_outputs(self, data, inputs) -> list[tuple[str, Callable[[], np.ndarray]]]:
        flavor, estimator = self.model.flavor, self.model.estimator
        sign = -1.0 if self._negate else 1.0
        if flavor == "lightgbm":
            return [(_booster_space(self.model), lambda: self._column(
                np.asarray(estimator.predict(data, raw_score=True), dtype=float), sign))]
        if flavor == "xgboost":
            return [(_booster_space(self.model), lambda: self._column(np.asarray(
                estimator.predict(_dmatrix(data), output_margin=True), dtype=float), sign))]
        final = final_estimator(estimator)
        if self.task == "regression":
            return [("prediction", lambda: np.asarray(final.predict(inputs), dtype=float))]
        out: list[tuple[str, Callable[[], np.ndarray]]] = []
        if hasattr(final, "decision_function"):
            margin = "log-odds" if len(_classes(self.model) or ()) <= 2 else "raw class score"
            out.append((margin, lambda: self._column(
                np.asarray(final.decision_function(inputs), dtype=float), sign)))
        if hasattr(final, "predict_proba"):
            out.append(("probability", lambda: self._column(
                np.asarray(final.predict_proba(inputs), dtype=float), 1.0)))
        return out

    def _column(self, raw: np.ndarray, sign: float) -> np.ndarray:
        if raw.ndim == 2:
            return raw[:, self._class_index if self._class_index is not None else -1]
        return raw * sign

    def _explain_permutation(self, frame) -> Explained:
        import shap

        if self._codec is None:
            self._codec = _Codec(self._background()[list(self.features)])
        codec = self._codec
        rows = codec.encode(frame[list(self.features)])
        background = codec.encode(self._background()[list(self.features)])

        def model_output(matrix: np.ndarray) -> np.ndarray:
            return self._probability(self.prepare(codec.decode(matrix)))

        masker = shap.maskers.Independent(background, max_samples=len(background))
        explainer = shap.explainers.Permutation(model_output, masker, seed=self.seed)
        evals = self.max_evals or DEFAULT_MAX_EVALS_PER_FEATURE * len(self.features)
        result = explainer(rows, max_evals=max(evals, 2 * len(self.features) + 1), silent=True)
        values = np.asarray(result.values, dtype=float)
        base = np.asarray(result.base_values, dtype=float).reshape(len(frame))
        self.output_space = "probability" if self.task != "regression" else "prediction"
        return Explained(values, base, model_output(rows))


# ---------------------------------------------------------------- helpers

def _tree_explainer(final: Any, flavor: str) -> Any:
    """``shap.TreeExplainer`` for tree models it explains exactly, else None."""
    import shap

    categorical = getattr(final, "is_categorical_", None)
    if categorical is not None and np.any(categorical):
        # shap reads the split thresholds of categorical HistGradientBoosting splits as numbers
        # and returns wrong values without an error; the permutation explainer is correct.
        return None
    if flavor == "sklearn" and not _is_tree_family(final):
        return None
    try:
        return shap.TreeExplainer(final)
    except Exception:  # noqa: BLE001 - not a model TreeExplainer understands
        return None


def _is_linear(final: Any) -> bool:
    module = type(final).__module__
    return module.startswith("sklearn.linear_model") and hasattr(final, "coef_")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _is_tree_family(final: Any) -> bool:
    module = type(final).__module__
    return module.startswith(("sklearn.ensemble", "sklearn.tree", "lightgbm", "xgboost"))


def _classes(model: LoadedModel) -> list | None:
    classes = getattr(model.estimator, "classes_", None)
    return list(classes) if classes is not None else None


def _index_of(classes: list, label: Any) -> int | None:
    if label is None:
        return None
    for i, value in enumerate(classes):
        if value == label or str(_plain(value)) == str(label):
            return i
    return None


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _booster_objective(model: LoadedModel) -> str:
    if model.flavor == "lightgbm":
        objective = (model.estimator.params or {}).get("objective") or \
            model.estimator.dump_model(num_iteration=1).get("objective", "")
        return str(objective).split(" ")[0]
    import json

    config = json.loads(model.estimator.save_config())
    return str(config["learner"]["objective"]["name"])


def _booster_space(model: LoadedModel) -> str:
    objective = _booster_objective(model)
    if objective in ("binary", "binary:logistic", "binary:logitraw", "cross_entropy"):
        return "log-odds"
    if objective.startswith(("regression", "reg:squared", "huber", "fair", "quantile", "l1", "l2")):
        return "prediction"
    return "raw model score"


def _booster_class_index(model: LoadedModel, positive_label: Any) -> int | None:
    objective = _booster_objective(model)
    if objective.startswith("multi"):
        try:
            return int(positive_label)
        except (TypeError, ValueError):
            raise SourceError(f"model file {model.path} is a multiclass booster; set [model] "
                              "positive_label to the class number to explain") from None
    return None


def _lightgbm_frame(booster: Any, data):
    """Categorical columns as pandas categories with the categories LightGBM was trained on."""
    import pandas as pd

    categorical = (booster.params or {}).get("categorical_feature")
    if categorical is None:
        infos = booster.dump_model(num_iteration=1).get("feature_infos", {})
        categorical = [i for i, name in enumerate(booster.feature_name())
                       if isinstance(infos.get(name), dict) and infos[name].get("values")]
    categories = list(booster.pandas_categorical or [])
    for position, (index, name) in enumerate(
            (i, n) for i, n in enumerate(data.columns) if i in set(categorical)):
        if position < len(categories):
            data[name] = pd.Categorical(data[name].astype(object), categories=categories[position])
    for index, name in enumerate(data.columns):
        if index not in set(categorical):
            data[name] = pd.to_numeric(data[name].astype(object), errors="coerce").astype(float)
    return data


def _xgboost_frame(booster: Any, data):
    import pandas as pd

    types = booster.feature_types or ["float"] * len(data.columns)
    for name, kind in zip(data.columns, types):
        if kind == "c":
            data[name] = pd.Categorical(data[name].astype(object))
        else:
            data[name] = pd.to_numeric(data[name], errors="coerce").astype(float)
    return data


def _dmatrix(data):
    import xgboost

    return data if isinstance(data, xgboost.DMatrix) else xgboost.DMatrix(data, enable_categorical=True)


def _dense(matrix: Any) -> np.ndarray:
    if hasattr(matrix, "toarray"):
        matrix = matrix.toarray()
    return np.asarray(matrix, dtype=float)


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= ADDITIVITY_TOLERANCE * (1 + np.abs(b))))


def _sum_groups(values: np.ndarray, groups: np.ndarray, n_features: int) -> np.ndarray:
    """Sum the columns of ``values`` that belong to the same feature (``groups[column]``)."""
    indicator = np.zeros((values.shape[1], n_features))
    indicator[np.arange(values.shape[1]), groups] = 1.0
    return values @ indicator


def _output_groups(pre: Any, data, features: Sequence[str], transformed: Any) -> np.ndarray | None:
    """For each preprocessed column, the index of the one logged feature it is made from.

    Each feature in turn is shuffled across the rows; the columns that change belong to it. A
    column that two features move cannot be attributed to one of them (None is returned). Columns
    no shuffle moves (e.g. a category absent from these rows) are placed by the structure of the
    ColumnTransformer: a transformer of a single column, or by name (``<feature>_<category>``).
    """
    import pandas as pd

    base = _dense(transformed)
    owner = np.full(base.shape[1], -1)
    rng = np.random.default_rng(0)
    for j, feature in enumerate(features):
        shuffled = data.copy() if isinstance(data, pd.DataFrame) else np.array(data, copy=True)
        order = rng.permutation(len(base))
        if isinstance(shuffled, pd.DataFrame):
            shuffled[feature] = shuffled[feature].to_numpy()[order]
        else:
            shuffled[:, j] = shuffled[order, j]
        moved = _dense(pre.transform(shuffled))
        changed = ~((moved == base) | (np.isnan(moved) & np.isnan(base))).all(axis=0)
        if np.any(changed & (owner >= 0) & (owner != j)):
            return None
        owner[changed] = j
    for column in np.flatnonzero(owner < 0):
        found = _owner_by_structure(pre, int(column), features, base.shape[1])
        if found is None:
            return None
        owner[column] = found
    return owner


def _owner_by_structure(pre: Any, column: int, features: Sequence[str], width: int) -> int | None:
    transformer = pre
    steps = getattr(pre, "steps", None)
    if steps:
        if len(steps) != 1:
            return None
        transformer = steps[0][1]
    if not hasattr(transformer, "transformers_") or not hasattr(transformer, "output_indices_"):
        return None
    for name, _, columns in transformer.transformers_:
        block = transformer.output_indices_.get(name)
        if block is None or not block.start <= column < block.stop:
            continue
        names = _column_names(columns, features)
        if len(names) == 1 and names[0] in features:
            return list(features).index(names[0])
        try:
            out_name = str(transformer.get_feature_names_out()[column]).split("__", 1)[-1]
        except Exception:  # noqa: BLE001 - transformers without names
            return None
        matches = [f for f in names if out_name == f or out_name.startswith(f + "_")]
        if not matches:
            return None
        best = max(matches, key=len)
        return list(features).index(best) if best in features else None
    return None


def _column_names(columns: Any, features: Sequence[str]) -> list[str]:
    if isinstance(columns, str):
        return [columns]
    if isinstance(columns, slice):
        return list(features)[columns]
    values = list(np.atleast_1d(columns))
    if values and isinstance(values[0], (bool, np.bool_)):
        return [f for f, keep in zip(features, values) if keep]
    if values and isinstance(values[0], (int, np.integer)):
        return [list(features)[int(i)] for i in values]
    return [str(v) for v in values]


class _Codec:
    """Turns a mixed-type table into a float matrix (categories become codes) and back.

    SHAP's maskers only handle numbers; the model must see the original values.
    """

    def __init__(self, frame) -> None:
        self.columns = list(frame.columns)
        self.dtypes = {c: frame[c].dtype for c in self.columns}
        self.codebooks: dict[str, list[Any]] = {}
        for name in self.columns:
            if not _is_number(frame[name]):
                self.codebooks[name] = []

    def encode(self, frame) -> np.ndarray:
        """Floats: numbers as they are, booleans 0/1, categories as their code (missing NaN)."""
        import pandas as pd

        out = np.empty((len(frame), len(self.columns)), dtype=float)
        for j, name in enumerate(self.columns):
            series = frame[name]
            if name in self.codebooks:
                book = self.codebooks[name]
                lookup = {v: i for i, v in enumerate(book)}
                codes = []
                for value in series.astype(object):
                    if value is None or (isinstance(value, float) and np.isnan(value)) or \
                            value is pd.NA:
                        codes.append(np.nan)
                        continue
                    if value not in lookup:
                        lookup[value] = len(book)
                        book.append(value)
                    codes.append(lookup[value])
                out[:, j] = codes
            else:
                out[:, j] = pd.to_numeric(series.astype(object), errors="coerce").astype(float)
        return out

    def decode(self, matrix: np.ndarray):
        """The table the model expects, from a (masked) float matrix."""
        import pandas as pd

        data: dict[str, Any] = {}
        for j, name in enumerate(self.columns):
            column = matrix[:, j]
            if name in self.codebooks:
                book = np.array(self.codebooks[name] + [None], dtype=object)
                codes = np.where(np.isnan(column), len(book) - 1, column).astype(int)
                data[name] = book[codes]
            elif pd.api.types.is_bool_dtype(self.dtypes[name]):
                data[name] = np.where(np.isnan(column), None, column > 0.5) if np.isnan(column).any() \
                    else column > 0.5
            elif pd.api.types.is_integer_dtype(self.dtypes[name]) and not np.isnan(column).any():
                data[name] = column.astype(np.int64)
            else:
                data[name] = column
        return pd.DataFrame(data, columns=self.columns)


def _is_number(series) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype))
