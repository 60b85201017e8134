"""``harness run --executor ray`` on an embedded local Ray (2 CPUs): the same records as a
serial run; a cell whose worker is killed mid-run is reported as lost, the rest kept.
Skipped when the optional extra ``cluster`` (package ``ray``) is not installed."""
from __future__ import annotations

import json

import pytest

from harness.cli import main
from harness.records import load_records
from harness.rundir import load_outcomes, read_run_info

try:
    import ray
except ImportError:  # the optional extra 'cluster' is not installed
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason="ray is not installed (optional extra 'cluster')")

SUITE = """
import os, signal
import pytest

@pytest.mark.parametrize("spec", ["none", "rtn:bits=4", "rtn:bits=8", "nf4:group=64"])
def test_cell(bench, harness_model, spec):
    if spec == "nf4:group=64" and os.path.exists({marker!r}):
        os.kill(os.getpid(), signal.SIGKILL)  # the Ray worker dies mid-task, as on a lost node
    bench.record("ppl.window", 10.0 + len(spec), spec=spec, technique=spec.split(":")[0])
    bench.record("size.bytes", 100.0 * len(spec), spec=spec, technique=spec.split(":")[0])
"""


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    yield ray
    ray.shutdown()


def keyed(run):
    return sorted((r.model, r.spec, r.metric, r.value) for r in load_records(run))


@needs_ray
def test_ray_records_equal_a_serial_run(tmp_path, monkeypatch, capsys, local_ray):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test_cells.py").write_text(SUITE.format(marker=str(tmp_path / "kill")))
    assert main(["run", "test_cells.py", "--out", "serial", "--no-report", "--", "-q", "-p", "no:cacheprovider"]) == 0
    assert main(["run", "test_cells.py", "--executor", "ray", "--out", "ray", "--no-report"]) == 0
    assert "4 cells as Ray tasks (1 CPU each)" in capsys.readouterr().out
    assert keyed(tmp_path / "ray") == keyed(tmp_path / "serial") and len(keyed(tmp_path / "ray")) == 8
    info = read_run_info(tmp_path / "ray")
    assert info["status"] == "complete" and info["executor"] == "ray" and info["cells"] == 4
    (node,) = info["nodes"].values()  # one node: its fingerprint, cells and device class kept
    assert node["cells"] == 4 and node["fingerprint"]["device"] == "cpu" and node["device_class"].startswith("cpu-")
    assert {r.run_id for r in load_records(tmp_path / "ray")} == {info["run_id"]}
    assert sorted(o["outcome"] for o in load_outcomes(tmp_path / "ray")) == ["passed"] * 4
    import tempfile
    from pathlib import Path

    assert not (Path(tempfile.gettempdir()) / f"harness-ray-{info['run_id']}").exists()  # staging removed


@needs_ray
def test_killed_cell_is_reported_not_lost(tmp_path, monkeypatch, capsys, local_ray):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "kill").write_text("")
    (tmp_path / "test_cells.py").write_text(SUITE.format(marker=str(tmp_path / "kill")))
    assert main(["run", "test_cells.py", "--executor", "ray", "--out", "ray", "--no-report"]) == 1
    assert "cell lost: test_cells.py::test_cell[harness-tiny-nf4:group=64]" in capsys.readouterr().err
    info = read_run_info(tmp_path / "ray")
    assert info["status"] == "partial" and info["cells_lost"] == 1 and "1 of 4 cells lost" in info["partial_reason"]
    lost = [o for o in load_outcomes(tmp_path / "ray") if o["outcome"] == "error"]
    assert len(lost) == 1 and "nf4:group=64" in lost[0]["nodeid"] and "cell lost" in lost[0]["message"]
    assert sorted({r.spec for r in load_records(tmp_path / "ray")}) == ["none", "rtn:bits=4", "rtn:bits=8"]
    json.dumps(info)  # run.json stays plain JSON


@pytest.mark.parametrize("address, msg", [
    ("auto", "'auto': cannot connect to a Ray cluster"),             # ray.init fails (mocked)
    ("127.0.0.1:{port}", ":{port}': cannot connect to a Ray cluster"),  # nothing listens: refused in seconds
    ("nonsense", "expected auto or HOST:PORT"),
])
def test_unreachable_address_is_one_line_exit_2(tmp_path, capsys, monkeypatch, address, msg):
    import socket

    from harness import executor_ray

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(executor_ray, "import_ray", lambda: _Unreachable())
    assert main(["run", "--executor", "ray", "--address", address.format(port=port),
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg.format(port=port) in err[0]
    assert not (tmp_path / "r").exists()


class _Unreachable:
    """ray.init as it fails for an address nobody answers (without waiting for its time-out)."""

    @staticmethod
    def is_initialized() -> bool:
        return False

    @staticmethod
    def init(**kw):
        raise ConnectionError(f"Failed to connect to GCS at {kw.get('address')}")


def test_without_ray_installed_one_line_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # import ray -> ImportError
    assert main(["run", "--executor", "ray", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'llm-compression-harness[cluster]'" in err[0]
