"""What scikit-learn and fairlearn say of a kiln model, for the explanation and fairness tests.

    python tests/explain_check.py importance MODEL.onnx MODEL.json CONFIG.toml DATA REPEATS
        scikit-learn's permutation_importance of the exported model (onnxruntime, wrapped as
        an estimator over the raw columns), scored by accuracy: {column: [mean, std]}.
    python tests/explain_check.py shapley MODEL.onnx MODEL.json CONFIG.toml ROWS.json
        exact Shapley values of a *linear* regression model at the rows of a `kiln explain
        --json` answer: w_i (x_i - mean_i) = f(x) - f(x with column i at its training mean).
    python tests/explain_check.py fairness PREDICTIONS.csv CONFIG.toml DATA POSITIVE COL...
        fairlearn's MetricFrame (selection rate, accuracy, TPR, FPR, precision) per group of
        each column and of their intersection, demographic_parity_difference/ratio and
        equalized_odds_difference, on kiln's predictions of DATA.

Data files are read as the model's training config says (delimiter, header, column names).
"""
import gzip
import json
import sys
import tomllib

import numpy as np
import onnxruntime as ort
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin


def read_table(config_path, data_path):
    data = tomllib.load(open(config_path, "rb"))["data"]
    raw = open(data_path, "rb").read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    delimiter = data.get("delimiter", "\t" if data_path.endswith(".tsv") else ",")
    lines = [l for l in raw.decode("utf-8").splitlines()[data.get("skip_rows", 0) :] if l.strip()]
    split = (lambda l: l.split()) if delimiter == "whitespace" else (lambda l: l.split(delimiter))
    rows = [[f.strip() for f in split(l)] for l in lines]
    if data.get("header", False):
        names, rows = rows[0], rows[1:]
    elif data.get("columns"):
        names = data["columns"]
    else:
        names = [f"c{i}" for i in range(len(rows[0]))]
    return pd.DataFrame(rows, columns=names), data


class OnnxModel(ClassifierMixin, BaseEstimator):
    """An exported kiln classifier as a scikit-learn estimator over the raw columns."""

    def __init__(self, model_path, sidecar_path):
        self.model_path = model_path
        self.sidecar_path = sidecar_path
        self.side = json.load(open(sidecar_path))
        self.session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        self.classes_ = np.array(self.side.get("class_names") or [])

    def fit(self, X, y=None):
        return self

    def encode(self, df):
        missing = set(self.side["missing_values"])
        parts = []
        for col in self.side["columns"]:
            v = df[col["name"]].astype(str)
            if col["kind"] == "numeric":
                num = pd.to_numeric(v.where(~v.isin(missing)), errors="coerce")
                parts.append(num.to_numpy(np.float32)[:, None])
            else:
                v = v.where(~v.isin(missing), col.get("fill"))
                parts.append(np.stack([(v == c).to_numpy(np.float32) for c in col["categories"]], 1))
        return np.concatenate(parts, 1).astype(np.float32)

    def outputs(self, df):
        name = "prediction" if "prediction" in self.side["outputs"] else "probabilities"
        (p,) = self.session.run([name], {"features": self.encode(df)})
        return p

    def predict(self, df):
        p = self.outputs(df)
        if "prediction" in self.side["outputs"]:
            return p[:, 0]
        # kiln takes the last of equal probabilities; so does argmax of the reversed row.
        best = p.shape[1] - 1 - np.argmax(p[:, ::-1], axis=1)
        return self.classes_[best]


def importance(model_path, sidecar_path, config_path, data_path, repeats):
    from sklearn.inspection import permutation_importance

    df, data = read_table(config_path, data_path)
    model = OnnxModel(model_path, sidecar_path)
    label = data["label"]
    features = [c["name"] for c in model.side["columns"]]
    r = permutation_importance(
        model, df[features], df[label], scoring="accuracy", n_repeats=int(repeats), random_state=0
    )
    return {f: [float(m), float(s)] for f, m, s in zip(features, r.importances_mean, r.importances_std)}


def shapley(model_path, sidecar_path, config_path, rows_path):
    model = OnnxModel(model_path, sidecar_path)
    report = json.load(open(rows_path))
    columns = model.side["columns"]
    assert all(c["kind"] == "numeric" for c in columns), "numeric columns only"
    out = []
    for row in report["rows"]:
        x = pd.DataFrame([row["values"]], columns=report["groups"])
        variants = [x]
        for c in columns:
            v = x.copy()
            v[c["name"]] = repr(c["mean"])
            variants.append(v)
        f = model.outputs(pd.concat(variants, ignore_index=True))[:, 0].astype(np.float64)
        out.append([float(f[0] - f[1 + i]) for i in range(len(columns))])
    return out


def fairness(predictions_path, config_path, data_path, positive, columns):
    from fairlearn.metrics import (
        MetricFrame,
        demographic_parity_difference,
        demographic_parity_ratio,
        equalized_odds_difference,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )
    from sklearn.metrics import accuracy_score, precision_score

    df, data = read_table(config_path, data_path)
    pred = pd.read_csv(predictions_path)["prediction"].astype(str).to_numpy()
    truth = df[data["label"]].to_numpy()
    y_true = (truth == positive).astype(int)
    y_pred = (pred == positive).astype(int)
    metrics = {
        "selection_rate": selection_rate,
        "accuracy": accuracy_score,
        "tpr": true_positive_rate,
        "fpr": false_positive_rate,
        "precision": lambda t, p: precision_score(t, p, zero_division=np.nan),
    }
    out = []
    breakdowns = [[c] for c in columns] + ([columns] if len(columns) > 1 else [])
    for cols in breakdowns:
        sf = df[cols] if len(cols) > 1 else df[cols[0]]
        mf = MetricFrame(metrics=metrics, y_true=y_true, y_pred=y_pred, sensitive_features=sf)
        groups = {}
        for key, r in mf.by_group.iterrows():
            key = list(key) if isinstance(key, tuple) else [key]
            groups[" & ".join(key)] = {k: (None if pd.isna(v) else float(v)) for k, v in r.items()}
        out.append(
            {
                "columns": cols,
                "groups": groups,
                "demographic_parity_difference": float(demographic_parity_difference(y_true, y_pred, sensitive_features=sf)),
                "demographic_parity_ratio": float(demographic_parity_ratio(y_true, y_pred, sensitive_features=sf)),
                "equalized_odds_difference": float(equalized_odds_difference(y_true, y_pred, sensitive_features=sf)),
            }
        )
    return out


def main():
    what, args = sys.argv[1], sys.argv[2:]
    if what == "importance":
        result = importance(*args)
    elif what == "shapley":
        result = shapley(*args)
    elif what == "fairness":
        result = fairness(args[0], args[1], args[2], args[3], args[4:])
    else:
        raise SystemExit(f"unknown check {what!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
