"""Helpers of the training tests: subprocesses and reading TensorBoard files."""

import glob
import json
import os
import pathlib
import struct
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = pathlib.Path(__file__).resolve().parent / "tiny_trainer.py"


def run_python(args, *, env=None, timeout=240, check=True):
    """Run the venv's `python args...` from the repository root."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT))
    full_env.pop("XLA_FLAGS", None)
    full_env.update(env or {})
    result = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\n"
            f"stderr:\n{result.stderr[-5000:]}"
        )
    return result


def read_events(directory, recursive: bool = False) -> dict[str, list]:
    """The events of the TensorBoard files in `directory` (and its subfolders if
    `recursive`): `{tag: [(step, value), ...]}`; images and hparams give their kind
    as value. Like TensorBoard, a `SessionLog.START` at step k (what a writer with
    `purge_step=k` writes) discards the earlier events of steps >= k."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list] = {}
    parts = ["**"] if recursive else []
    pattern = os.path.join(directory, *parts, "events.out.tfevents.*")
    for path in sorted(glob.glob(pattern, recursive=recursive)):
        data = pathlib.Path(path).read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            record = data[pos + 12 : pos + 12 + length]
            pos += 12 + length + 4
            event = event_pb2.Event.FromString(record)
            if event.session_log.status == event_pb2.SessionLog.START:
                for tag, values in out.items():
                    out[tag] = [(st, v) for st, v in values if st < event.step]
            for v in event.summary.value:
                kind = v.WhichOneof("value")
                value = v.simple_value if kind == "simple_value" else kind
                out.setdefault(v.tag, []).append((event.step, value))
    return out


def read_jsonl(path, tolerant: bool = False) -> list[dict]:
    """The records of a `metrics.jsonl`; `tolerant` skips a line cut by a kill."""
    out = []
    for line in pathlib.Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            if not tolerant:
                raise
    return out
