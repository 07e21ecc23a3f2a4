"""The feature sets of scripts/features, for the Python benches: the set a bench builds with is
KILN_FEATURES when set, else the named set of that file (TEST: the build `scripts/test` made,
so that benchmarking never rebuilds burn with other features)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def named(name="TEST"):
    """The feature list of KILN_FEATURES_<name> in scripts/features."""
    with open(os.path.join(ROOT, "scripts", "features")) as f:
        for line in f:
            key, sep, value = line.strip().partition("=")
            if sep and key == f"KILN_FEATURES_{name}":
                return value.strip('"')
    raise KeyError(f"scripts/features names no KILN_FEATURES_{name}")


def features(name="TEST"):
    """The feature list to build with: KILN_FEATURES, else the named set."""
    return os.environ.get("KILN_FEATURES", named(name))


def cargo_args(name="TEST"):
    """`--features LIST` for cargo, or nothing for the default features alone."""
    f = features(name)
    return ["--features", f] if f else []
