"""Downloading a missing D4RL file, against a local HTTP proxy in a thread (urllib sends the request
for D4RL's URL to it, so no test touches the network): a download that dies mid-transfer stops the
run with one line that names the file and the URL and leaves no file behind, neither the dataset
nor its partial download, and a server that stalls times out; a complete one lands where d4rl
itself reads it, and loads.

The Flax script only: the Data section is the same text in both (test_parity.py)."""

import contextlib
import http.client
import http.server
import os
import socket
import struct
import threading
import urllib.request
from functools import partial

import numpy as np
import pytest
from datasets import collect, write_d4rl_file
from one_line_errors import error_message

import sac_n_jax_flax as script

ENV_NAME = "hopper-medium-replay-v2"
FILE_NAME = "hopper_medium_replay-v2.hdf5"  # d4rl's name of that dataset's file
URL = f"http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/{FILE_NAME}"
ANNOUNCED = 100_000  # bytes a failing server announces, of which it sends
SENT = 1000


@pytest.fixture(scope="module")
def hopper_hdf5(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A small D4RL-layout file of Hopper's dimensions (obs 11, action 3), as a server sends it."""
    path = tmp_path_factory.mktemp("served") / FILE_NAME
    write_d4rl_file(path, collect("Hopper-v4", 200, seed=0, max_episode_steps=50))
    return path.read_bytes()


@contextlib.contextmanager
def proxy(monkeypatch: pytest.MonkeyPatch, respond):
    """An HTTP proxy on 127.0.0.1, served by a thread, that answers every GET with
    respond(handler), and that urllib uses from now on: yields the URLs it was asked for. On the
    way out its thread is stopped and joined."""
    requested = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requested.append(self.path)  # a proxy is asked for the whole URL
            respond(self)

        def log_message(self, *args) -> None:  # no request log on stderr
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    serve = partial(server.serve_forever, poll_interval=0.02)  # shutdown() waits for a poll
    thread = threading.Thread(target=serve, name="test proxy", daemon=True)
    thread.start()
    try:
        for name in ("http_proxy", "HTTP_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{server.server_address[1]}")
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.setenv(name, "")
        # urlopen keeps the opener of its first call, with the proxies of that time
        monkeypatch.setattr(urllib.request, "_opener", None)
        yield requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert not thread.is_alive(), "the proxy's thread did not stop"


def send_headers(handler, **headers: str) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/octet-stream")
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()


def short_body(data: bytes):
    """Content-Length: ANNOUNCED, then the first SENT bytes of the file, and the server closes."""

    def respond(handler) -> None:
        send_headers(handler, Content_Length=str(ANNOUNCED))
        handler.wfile.write(data[:SENT])

    return respond


def reset_mid_body(data: bytes):
    """As short_body, but the connection is reset (TCP RST) instead of closed."""

    def respond(handler) -> None:
        send_headers(handler, Content_Length=str(ANNOUNCED))
        handler.wfile.write(data[:SENT])
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.connection.close()

    return respond


def chunked_cut_mid_chunk(data: bytes):
    """Chunked transfer encoding (no Content-Length), a chunk of ANNOUNCED bytes announced and
    SENT of them sent, and the server closes."""

    def respond(handler) -> None:
        send_headers(handler, Transfer_Encoding="chunked")
        handler.wfile.write(b"%x\r\n" % ANNOUNCED + data[:SENT])

    return respond


def not_found(data: bytes):
    def respond(handler) -> None:
        handler.send_error(404)

    return respond


def load_config():
    return script.parse_config([f"--env_name={ENV_NAME}", "--batch_size=32"])


@pytest.mark.parametrize(
    "respond",
    [
        short_body,
        reset_mid_body,
        chunked_cut_mid_chunk,  # http.client.IncompleteRead, which is no OSError
        not_found,
    ],
)
def test_failed_download_is_one_line_and_leaves_no_file(
    tmp_path, monkeypatch, hopper_hdf5: bytes, respond
) -> None:
    directory = tmp_path / "datasets"
    monkeypatch.setenv("D4RL_DATASET_DIR", str(directory))
    with proxy(monkeypatch, respond(hopper_hdf5)) as requested:
        message = error_message(script.load_task, load_config())
    assert requested == [URL]
    path = directory / FILE_NAME
    assert f"{path} is missing and downloading {URL} failed (" in message, message
    assert not directory.exists(), "a failed download must leave nothing behind"


def test_complete_download_lands_where_d4rl_reads_it_and_loads(
    tmp_path, monkeypatch, capsys, hopper_hdf5: bytes
) -> None:
    """Also over the temporary file of a run that was killed while writing the download."""
    directory = tmp_path / "datasets"
    monkeypatch.setenv("D4RL_DATASET_DIR", str(directory))
    path = directory / FILE_NAME
    directory.mkdir()
    (directory / f"{FILE_NAME}.tmp").write_bytes(b"half a file")

    def respond(handler) -> None:
        send_headers(handler, Content_Length=str(len(hopper_hdf5)))
        handler.wfile.write(hopper_hdf5)

    with proxy(monkeypatch, respond) as requested:
        dataset, envs, ref_scores = script.load_task(load_config())
        assert requested == [URL]
        assert f"downloading {URL} to {path}" in capsys.readouterr().out
        assert os.listdir(directory) == [FILE_NAME]
        assert path.read_bytes() == hopper_hdf5
        # the data of that file, for hopper's eval env and reference returns
        transitions = script.qlearning_dataset(str(path))
        for key, value in transitions.items():
            np.testing.assert_array_equal(np.asarray(getattr(dataset, key)), value, err_msg=key)
        assert len(dataset.rewards) > 100
        env = envs.envs[0]
        assert env.spec.id == "Hopper-v4"
        envs.close()
        assert ref_scores == script.D4RL_REF_SCORES["hopper"]
        # the next run reads the file and downloads nothing
        assert script.d4rl_file(ENV_NAME) == str(path)
        assert requested == [URL]


def test_a_stalled_download_times_out_in_one_line(
    tmp_path, monkeypatch, hopper_hdf5: bytes
) -> None:
    """A server that stops sending mid-body: the script's timeout ends the wait (shortened here to
    half a second) and the run stops with one line; nothing is left behind."""
    directory = tmp_path / "datasets"
    monkeypatch.setenv("D4RL_DATASET_DIR", str(directory))
    timeouts, release = [], threading.Event()
    real_urlopen = urllib.request.urlopen

    def urlopen(url: str, timeout: float):  # a call without a timeout fails here
        timeouts.append(timeout)
        return real_urlopen(url, timeout=0.5)

    def stall(handler) -> None:
        send_headers(handler, Content_Length=str(ANNOUNCED))
        handler.wfile.write(hopper_hdf5[:SENT])
        handler.wfile.flush()
        release.wait(timeout=30)  # until the test is done with it

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with proxy(monkeypatch, stall):
        try:
            message = error_message(script.load_task, load_config())
        finally:
            release.set()
    assert len(timeouts) == 1 and 0 < timeouts[0] <= 600, timeouts
    assert f"downloading {URL} failed (timed out)" in message, message
    assert not directory.exists()
