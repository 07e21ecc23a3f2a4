"""NVIDIA's Triton HTTP client (tritonclient.http), used against `kiln serve` as a Triton user
uses it, unchanged: health and readiness, metadata, model configuration, inference in binary
and JSON modes with and without a version, async inference, a gzip-compressed request, and the
statistics. Every answer is compared with what `kiln predict` wrote.

    triton_client.py HOST:PORT MODEL VERSION FEATURES.csv.gz EXPECTED.json

FEATURES: the rows (the model's features first, then the label); EXPECTED: `kiln predict`'s
probabilities, one list per row. Prints one JSON object naming each check that passed; any
failure raises (non-zero exit, the traceback says which).
"""
import gzip
import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def main():
    url, model, version, features, expected = sys.argv[1:6]
    want = np.array(json.load(open(expected)), dtype=np.float32)
    with gzip.open(features, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.float64)
    client = httpclient.InferenceServerClient(url=url, concurrency=2)
    md = client.get_model_metadata(model)
    width = md["inputs"][0]["shape"][1]
    x = rows[:, :width].astype(np.float32)
    assert x.shape[0] == want.shape[0], (x.shape, want.shape)
    passed = []

    assert client.is_server_live() and client.is_server_ready()
    for v in ("", version, "v" + version):
        assert client.is_model_ready(model, model_version=v), v
        assert client.get_model_metadata(model, model_version=v) == md, v
    assert md["versions"] == [version], md
    passed.append("health, readiness and metadata, with and without a version")

    config = client.get_model_config(model)
    assert config["name"] == model, config
    assert config["input"][0]["dims"] == [width], config
    assert config["input"][0]["data_type"] == "TYPE_FP32", config
    assert config["max_batch_size"] > 0, config
    assert client.get_model_config(model, model_version=version) == config
    passed.append("model configuration")

    def infer(binary_in, binary_out, v="", **kw):
        inp = httpclient.InferInput("features", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary_in)
        out = httpclient.InferRequestedOutput("probabilities", binary_data=binary_out)
        return client.infer(model, [inp], model_version=v, outputs=[out], **kw)

    for binary_in in (True, False):
        for binary_out in (True, False):
            for v in ("", version):
                got = infer(binary_in, binary_out, v).as_numpy("probabilities")
                assert got.dtype == np.float32 and got.shape == want.shape, (got.dtype, got.shape)
                assert np.array_equal(got, want), (binary_in, binary_out, v, np.abs(got - want).max())
    passed.append("infer: binary and JSON inputs and outputs, with and without a version")

    # Every output, as the client asks when it names none (JSON then), and a request id.
    inp = httpclient.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = client.infer(model, [inp], request_id="r-1")
    assert r.get_response()["id"] == "r-1"
    assert np.array_equal(r.as_numpy("probabilities"), want)
    passed.append("infer: every output, and the request id")

    handles = [client.async_infer(model, [inp]) for _ in range(4)]
    for h in handles:
        assert np.array_equal(h.get_result().as_numpy("probabilities"), want)
    passed.append("async_infer")

    got = infer(True, True, request_compression_algorithm="gzip").as_numpy("probabilities")
    assert np.array_equal(got, want)
    got = infer(True, True, request_compression_algorithm="deflate").as_numpy("probabilities")
    assert np.array_equal(got, want)
    passed.append("gzip and deflate request bodies")

    try:
        infer(True, True, v="99")
        raise AssertionError("version 99 answered")
    except InferenceServerException as e:
        assert "99" in e.message() and str(e.status()) == "404", (e.status(), e.message())
    passed.append("a version not served is a 404 naming it")

    stats = client.get_inference_statistics(model)["model_stats"]
    assert [s["name"] for s in stats] == [model] and stats[0]["version"] == version, stats
    s = stats[0]
    # 8 + 1 + 4 + 2 inferences answered, one refused.
    assert s["inference_stats"]["success"]["count"] >= 15, s
    assert s["inference_stats"]["fail"]["count"] >= 1, s
    assert s["inference_count"] >= 15 * x.shape[0] and s["execution_count"] >= 1, s
    assert s["inference_stats"]["compute_infer"]["ns"] > 0, s
    assert client.get_inference_statistics(model, model_version=version)["model_stats"] == stats
    passed.append("statistics")

    print(json.dumps({"passed": passed, "rows": int(x.shape[0])}))


if __name__ == "__main__":
    main()
