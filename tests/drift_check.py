"""Drift scores of a data file by numpy and scipy, for the drift test.

    python tests/drift_check.py DRIFT.json CONFIG.toml DATA COLUMN...

For each named column of DATA (read as the training config says), against the model's saved
profile (drift.json): a numeric column's shares in the profile's bins (numpy), its PSI and
scipy's two-sample Kolmogorov-Smirnov statistic against the profile's sample; a categorical
column's shares per category (missing values filled as the preprocessing fills them) and its
PSI. Prints {column: {"psi": .., "ks": .., "actual": [..]}}.
"""
import json
import sys

import numpy as np
from scipy.stats import ks_2samp

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from explain_check import read_table  # noqa: E402

FLOOR = 1e-4


def psi(expected, actual):
    e = np.maximum(np.asarray(expected, float), FLOOR)
    a = np.maximum(np.asarray(actual, float), FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def main():
    profile_path, config_path, data_path, *columns = sys.argv[1:]
    profile = {c["name"]: c for c in json.load(open(profile_path))["columns"]}
    df, data = read_table(config_path, data_path)
    missing = set(data.get("missing_values", []))
    out = {}
    for name in columns:
        p = profile[name]
        raw = df[name].astype(str)
        if p["kind"] == "numeric":
            x = raw[~raw.isin(missing)].astype(float).to_numpy()
            counts = np.bincount(np.searchsorted(p["edges"], x, side="left"), minlength=len(p["shares"]))
            actual = counts / len(x)
            out[name] = {
                "psi": psi(p["shares"], actual),
                "ks": float(ks_2samp(p["sample"], x).statistic),
                "actual": actual.tolist(),
            }
        else:
            cats = p["categories"]
            counts = np.zeros(len(cats) + 1)
            fill = max(zip(p["shares"], cats))[1]
            for v in raw:
                v = fill if v in missing else v
                counts[cats.index(v) if v in cats else len(cats)] += 1
            actual = counts / len(raw)
            out[name] = {"psi": psi(p["shares"] + [0.0], actual), "actual": actual.tolist()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
