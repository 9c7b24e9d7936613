"""Test helpers: small datasets in the exact D4RL HDF5 layout, written by the tests themselves,
the scripts run as subprocesses, and a reader for the offline wandb runs they write."""

import glob
import json
import os
import struct
import subprocess
import sys

import gymnasium as gym
import h5py
import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the Flax script and its Equinox sibling: same CLI, same module-level names
SCRIPTS = ["sac_n_jax_flax.py", "sac_n_jax_eqx.py"]


def script_path(script: str) -> str:
    """The script's absolute path; skips the test while the script does not exist yet."""
    path = os.path.join(REPO_ROOT, script)
    if not os.path.isfile(path):
        pytest.skip(f"{script} not written yet")
    return path


def collect(env_id: str, num_steps: int, seed: int, max_episode_steps: int, policy=None) -> dict[str, np.ndarray]:
    """Roll out `policy` (default: uniform random) and record rows the way D4RL does: one row per
    step, `terminals` on true terminations, `timeouts` on the last row of a time-limited episode."""
    env = gym.make(env_id, max_episode_steps=max_episode_steps)
    env.action_space.seed(seed)
    rows = {key: [] for key in ("observations", "actions", "rewards", "terminals", "timeouts")}
    obs, _ = env.reset(seed=seed)
    for _ in range(num_steps):
        action = env.action_space.sample() if policy is None else policy(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(rows, (obs, action, reward, terminated, truncated and not terminated)):
            rows[key].append(value)
        obs = env.reset()[0] if terminated or truncated else next_obs
    return {key: np.asarray(value) for key, value in rows.items()}


def write_d4rl_file(path, data: dict[str, np.ndarray]) -> None:
    """The dtypes of the released D4RL files: float32 arrays, bool flags."""
    with h5py.File(path, "w") as file:
        for key in ("observations", "actions", "rewards"):
            file.create_dataset(key, data=np.asarray(data[key], dtype=np.float32))
        for key in ("terminals", "timeouts"):
            file.create_dataset(key, data=np.asarray(data[key], dtype=bool))


def wandb_records(path: str) -> list[bytes]:
    """The records of a .wandb file. wandb 0.31 has no Python reader any more (its Go core writes
    the file), so this reads the LevelDB log format wandb documents: a 7-byte header, then 32 KiB
    blocks of chunks, each `crc32 (4) | length (2) | type (1) | payload`, where a record is one FULL
    chunk or a FIRST, MIDDLE..., LAST sequence."""
    with open(path, "rb") as file:
        data = file.read()
    assert data[:4] == b":W&B", f"{path} is not a .wandb file"
    block_size, header_size = 32768, 7
    position, records, pending = header_size, [], b""
    while position + header_size <= len(data):
        left_in_block = block_size - position % block_size
        if left_in_block < header_size:  # a block's tail too short for a header is zero padding
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + header_size])
        chunk = data[position + header_size : position + header_size + length]
        position += header_size + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
    return records


def read_wandb_run(wandb_dir: str) -> tuple[dict, list[dict]]:
    """(config, history rows) of the one offline run under `wandb_dir` (the WANDB_DIR of the run)."""
    from wandb.proto import wandb_internal_pb2

    paths = glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(paths) == 1, f"want one offline run under {wandb_dir}, found {paths}"
    config, history = {}, []
    for data in wandb_records(paths[0]):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "history":
            items = record.history.item
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
    return config, history


def start_script(script: str, args: list[str], cwd, **env: str) -> subprocess.Popen:
    """Start `python script args...` in `cwd` (so nothing lands in the repo), its wandb run under cwd."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(cwd), **env}
    command = [sys.executable, script, *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
