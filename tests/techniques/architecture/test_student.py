"""Students: every n-th block with the teacher's weights, narrower FFN/heads, random init,
angular selection, reload with transformers alone, and the one-line errors."""
from __future__ import annotations

import pytest
import torch
from conftest import ids, random_bert, random_gpt2, random_llama

import harness
from harness.calibration import Calibration, find_blocks
from harness.config import SpecError
from harness.techniques.architecture.student import StudentConfig, build_student, every_nth, spread

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_nth_keeps_distilberts_layers():
    assert every_nth(6, 3) == [0, 2, 4] and every_nth(4, 2) == [0, 2] and every_nth(5, 3) == [0, 2, 4]
    assert every_nth(4, 1) == [0] and every_nth(4, 4) == [0, 1, 2, 3]


def test_spread_keeps_the_first_and_the_last_block():
    assert spread(12, 6) == [0, 2, 4, 7, 9, 11]  # DistilBERT's extraction from BERT-base
    assert spread(6, 3) == [0, 2, 5] and spread(4, 2) == [0, 3] and spread(6, 1) == [5]
    st = build_student(random_llama(layers=4), StudentConfig(layers=2, select="spread"), None)
    assert st.kept == [0, 3] and st.model.config.num_hidden_layers == 2


def test_student_blocks_are_the_teachers_kept_blocks_and_reload_with_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    teacher = random_llama(layers=4)
    res = harness.compress(teacher, "student:layers=2")  # the teacher is copied, not changed
    s = res.model
    assert res.storage == "structural" and s.config.num_hidden_layers == 2 and len(find_blocks(teacher)[1]) == 4
    for j, t in enumerate([0, 2]):
        mine, theirs = find_blocks(s)[1][j].named_parameters(), find_blocks(teacher)[1][t].named_parameters()
        for (n, p), (_, q) in zip(mine, theirs):
            assert torch.equal(p, q), n
    s.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(again(input_ids=ids()).logits, s(input_ids=ids()).logits)


def test_width_cuts_neurons_and_head_groups_in_the_config(tmp_path):
    from transformers import AutoModelForCausalLM

    s = build_student(random_llama(layers=4, heads=4, kv_heads=2, inter=128),
                      StudentConfig(layers=2, width=0.5)).model
    cfg = s.config
    assert (cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (64, 2, 1)
    assert find_blocks(s)[1][0].mlp.down_proj.weight.shape == (64, 64)
    s.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(again(input_ids=ids()).logits, s(input_ids=ids()).logits)


def test_bert_width_cuts_ffn_only_and_gpt2_width_is_refused():
    b = build_student(random_bert(), StudentConfig(layers=1, width=0.5))
    assert b.model.config.intermediate_size == 64 and b.model.config.num_attention_heads == 4
    assert any("heads kept" in n for n in b.notes)
    assert b.model(input_ids=ids()).last_hidden_state.shape[-1] == 64
    with pytest.raises(SpecError, match=r"width=0.5 does not apply to gpt2 models.*works for .*llama"):
        build_student(random_gpt2(), StudentConfig(width=0.5))
    assert build_student(random_gpt2(), StudentConfig(layers=1)).model.config.n_layer == 1  # depth applies


def test_random_init_has_the_shapes_but_not_the_weights():
    teacher = random_llama(layers=4)
    r = build_student(teacher, StudentConfig(layers=2, init="random", seed=1)).model
    t = build_student(teacher, StudentConfig(layers=2)).model
    pairs = list(zip(r.named_parameters(), t.named_parameters()))
    assert all(p.shape == q.shape for (_, p), (_, q) in pairs)
    assert not torch.equal(r.model.layers[0].self_attn.q_proj.weight, t.model.layers[0].self_attn.q_proj.weight)


def test_angular_selection_drops_the_block_that_changes_nothing():
    teacher = random_llama(layers=4)
    blk = find_blocks(teacher)[1][2]
    with torch.no_grad():  # block 2 adds zero to the residual stream: input == output
        blk.self_attn.o_proj.weight.zero_()
        blk.mlp.down_proj.weight.zero_()
    calib = Calibration(ids(batch=4, seq=16))
    st = build_student(teacher, StudentConfig(layers=3, select="angular"), calib)
    assert st.kept == [0, 1, 3]
    assert build_student(teacher, StudentConfig(layers=3)).kept == [0, 2, 3]  # every-n spreads instead


@pytest.mark.parametrize("spec, msg", [
    ("student:layers=6", r"layers=6 is larger than the teacher's 2 layers; a student has 1..2"),
    ("student:width=1.5", r"width=1.5 is outside \(0, 1\]"),
    ("student:init=zeros", r"init='zeros' is not allowed; choose one of teacher, random"),
])
def test_bad_students_are_one_line_errors(spec, msg):
    with pytest.raises(SpecError, match=msg):
        harness.compress(random_llama(), spec)
