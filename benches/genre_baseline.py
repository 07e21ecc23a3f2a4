"""The classic baseline for `configs/shakespeare_genre.toml`: TF-IDF + logistic regression.

    python benches/genre_baseline.py

scikit-learn on the same files: fitted on the training file, scored on the test file (the six
held-out plays neither model trains on). TF-IDF of words and word pairs (sublinear, min_df 2),
logistic regression with C chosen by 5-fold cross-validation on the training file. Prints one
JSON object: test accuracy and macro F1.
"""
import csv
import json
import sys
import warnings

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline


def read(path):
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    return [r[0] for r in rows], [r[1] for r in rows]


def main():
    warnings.filterwarnings("ignore", category=FutureWarning)  # scikit-learn 1.9's notices
    x, y = read("data/shakespeare_genre/train.tsv")
    tx, ty = read("data/shakespeare_genre/test.tsv")
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        LogisticRegressionCV(Cs=[0.3, 1, 3, 10, 30], cv=5, max_iter=2000),
    )
    model.fit(x, y)
    p = model.predict(tx)
    print(json.dumps({
        "impl": "tfidf+logreg",
        "test_accuracy": accuracy_score(ty, p),
        "test_f1": f1_score(ty, p, average="macro"),
        "test_rows": len(ty),
    }))


if __name__ == "__main__":
    sys.exit(main())
