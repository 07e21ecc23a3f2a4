"""Reads a kiln run's TensorBoard event files with TensorBoard's own EventAccumulator and prints
what it found as one JSON object, for tests/cli.rs to compare with the run's metrics.jsonl.

    python tests/tensorboard_read.py RUN_DIR
"""
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import (
    SCALARS,
    TENSORS,
    EventAccumulator,
)
from tensorboard.plugins.hparams import plugin_data_pb2


def main(run_dir):
    acc = EventAccumulator(run_dir, size_guidance={SCALARS: 0, TENSORS: 0}).Reload()
    scalars = {
        tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]
    }
    hparams, end_status, group = {}, None, None
    try:
        content = acc.PluginTagToContent("hparams")
    except KeyError:
        content = {}
    if "_hparams_/session_start_info" in content:
        data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        group = data.session_start_info.group_name
        for k, v in data.session_start_info.hparams.items():
            kind = v.WhichOneof("kind")
            hparams[k] = getattr(v, kind) if kind else None
    if "_hparams_/session_end_info" in content:
        data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"])
        end_status = data.session_end_info.status
    print(json.dumps({
        "file_version": acc.file_version,
        "scalars": scalars,
        "hparams": hparams,
        "group": group,
        "end_status": end_status,
    }))


if __name__ == "__main__":
    main(sys.argv[1])
