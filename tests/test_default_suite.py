"""`make run` on this machine class: the default suite (quick profile, harness-tiny) has no
failing test. This is the README's first command minus the install; a technique that breaks
on the embedded model (as the KV cache did under a newer transformers) fails here first."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_default_quick_suite_has_no_failing_test(tmp_path):
    out = tmp_path / "run"
    cli = "import sys; from harness.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", cli, "run", "--quick", "--out", str(out), "--",
                           "-p", "no:cacheprovider", "--harness-threads", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200)
    outcomes = [json.loads(line) for f in sorted(out.glob("outcomes-*.jsonl"))
                for line in f.read_text().splitlines()]
    bad = [f"{o['nodeid']}: {o['outcome']} {o['message']}" for o in outcomes if o["outcome"] in ("failed", "error")]
    assert not bad, "\n".join(bad)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    passed = [o["nodeid"] for o in outcomes if o["outcome"] == "passed"]
    assert any("kv-cache" in p for p in passed) and any("gptq" in p for p in passed), passed
    assert (out / "report.html").is_file() and "harness run: report" in proc.stdout
