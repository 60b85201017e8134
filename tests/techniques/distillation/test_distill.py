"""Distillation: the loss terms, the student it builds, that training towards the teacher
brings the student closer to it, encoders, train.* figures through the evaluation path,
and the one-line errors."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import ids, random_bert, random_llama

import harness
from harness.calibration import Calibration
from harness.config import SpecError
from harness.techniques.distillation import losses as L

pytestmark = pytest.mark.usefixtures("one_thread")


def test_loss_terms_vanish_only_at_the_teacher():
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    assert L.logits_kd(t, t, 2.0).abs() < 1e-6 < L.logits_kd(s, t, 2.0)
    # T^2 scaling: at a high temperature the gradient scale is kept (Hinton et al.)
    assert 0.2 < float(L.logits_kd(s, t, 8.0) / L.logits_kd(s, t, 1.0)) < 5
    v, w = torch.randn(2, 6, 8, generator=g), torch.randn(2, 6, 4, generator=g)
    assert L.value_relation(v, v, 4, causal=True).abs() < 1e-6 < L.value_relation(v.flip(1), v, 4, causal=True)
    assert L.value_relation(w, v, L.relation_heads(4, 8, 4), causal=False) > 0  # widths differ
    # block 0 onto the input teacher block 2 read (the end of its segment); the last (final-normed) onto the last
    assert L.hidden_pairs([0, 2], 4) == [(0, 0), (1, 2), (2, 4)]
    assert L.hidden_pairs([0, 2], 4, "origin") == [(0, 0), (1, 1), (2, 4)]
    assert L.hidden_pairs([0, 1, 3, 5], 6) == [(0, 0), (1, 1), (2, 3), (3, 5), (4, 6)]
    assert L.hidden_pairs([0, 1, 2], 3) == L.hidden_pairs([0, 1, 2], 3, "origin")  # same depth: the same map
    proj = L.Projections(4, 8, 1, torch.device("cpu"))
    assert L.hidden_mse((w,), (v,), [(0, 0)], proj) > 0 and proj.maps is not None


@pytest.mark.parametrize("make", ["bert", "llama"])
def test_minilm_attention_is_the_models_own_attention(make):
    """The hooked Q/K (rotary applied, GQA's KV heads repeated) rebuild the probabilities
    the eager attention returns, and the MiniLM loss vanishes between a model and itself."""
    from harness.calibration import find_blocks

    m = (random_bert if make == "bert" else random_llama)().eval()
    for mod in m.modules():
        if hasattr(mod, "config"):
            mod.config._attn_implementation = "eager"
    tap = L.AttentionTap(find_blocks(m)[1][-1])
    with torch.no_grad():
        att = m(input_ids=ids(batch=2, seq=12), output_attentions=True).attentions[-1]
    q, k, v = tap.qkv()
    causal = make == "llama"
    assert torch.allclose(L._log_relation(q, k, tap.n_q, causal, None).exp(), att, atol=1e-5)
    assert L.minilm(tap, tap, tap.n_q, tap.n_kv, causal).abs() < 1e-6
    tap.remove()


def test_relation_loss_ignores_padding():
    g = torch.Generator().manual_seed(1)
    v_s, v_t = torch.randn(2, 6, 8, generator=g), torch.randn(2, 6, 8, generator=g)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 4:] = False
    noisy_s, noisy_t = v_s.clone(), v_t.clone()
    noisy_s[1, 4:], noisy_t[1, 4:] = 100.0, -50.0  # whatever sits in the padding
    a = L.value_relation(v_s, v_t, 2, causal=False, valid=valid)
    assert torch.allclose(a, L.value_relation(noisy_s, noisy_t, 2, causal=False, valid=valid))
    assert not torch.allclose(a, L.value_relation(noisy_s, noisy_t, 2, causal=False))


@pytest.mark.parametrize("loss", ["logts", "logits+logits", "hidden+kl"])
def test_a_loss_name_not_allowed_is_one_line(loss):
    with pytest.raises(SpecError, match=r"loss=.*allowed: logits, hidden, relation, combined with \+"):
        harness.techniques.make(f"distill:loss={loss}")


def test_default_student_is_the_teachers_shape():
    t = random_llama()
    calib = Calibration(ids(batch=4, seq=16))
    res = harness.compress(copy.deepcopy(t), "distill:steps=2,batch=2", calib)
    assert res.storage == "dense" and res.model.config.num_hidden_layers == 2
    assert sum(p.numel() for p in res.model.parameters()) == sum(p.numel() for p in t.parameters())
    assert res.figures["train.steps"] == 2 and res.figures["train.tokens"] == 2 * 2 * 16


def _kl_to(teacher, student, x):
    with torch.no_grad():
        return L.logits_kd(student(input_ids=x).logits, teacher(input_ids=x).logits, 1.0).item()


def test_distillation_brings_the_student_closer_to_the_teacher(tiny_lm, tiny_calibration):
    teacher = tiny_lm.model
    x = tiny_calibration.input_ids[:4, :64]
    spec = "loss=logits+hidden,layers=2,steps=12,batch=4,seq_len=64,alpha=1"
    untrained = harness.compress(copy.deepcopy(teacher), "student:layers=2").model
    res = harness.compress(copy.deepcopy(teacher), f"distill:{spec}", tiny_calibration)
    assert _kl_to(teacher, res.model, x) < 0.8 * _kl_to(teacher, untrained, x)
    assert res.figures["train.loss_last"] < res.figures["train.loss_first"]


def test_relation_distillation_lowers_its_loss():
    t = random_llama()
    res = harness.compress(copy.deepcopy(t), "distill:loss=relation,layers=1,steps=24,batch=2,alpha=1,lr=3e-3",
                           Calibration(ids(batch=4, seq=16)))
    assert res.figures["train.loss_last"] < 0.8 * res.figures["train.loss_first"]


@pytest.mark.parametrize("make", ["bert", "llama"])
def test_the_state_relation_trains_the_last_blocks_output_path(make):
    """MiniLM's relations read the last block's Q/K/V only: its attention output and FFN get
    no gradient from them. The output-state relation (relation_states, the default) reaches
    them, for encoders (last_hidden_state) and causal LMs (the output head's input)."""
    from harness.calibration import find_blocks
    from harness.techniques.architecture.student import build_student
    from harness.techniques.distillation.distill import DistillConfig, Objective

    teacher = (random_bert if make == "bert" else random_llama)().eval()
    grads = {}
    for states in (False, True):
        cfg = DistillConfig(loss="relation", layers=1, alpha=1.0, relation_states=states)
        st = build_student(teacher, cfg.student, None)
        obj = Objective(teacher, st.model, st.kept, cfg)
        obj(ids(batch=2, seq=12)).backward()
        obj.close()
        last = find_blocks(st.model)[1][-1]
        ffn = last.output.dense if make == "bert" else last.mlp.down_proj
        grads[states] = ffn.weight.grad
    assert grads[False] is None or grads[False].abs().max() == 0
    assert grads[True] is not None and grads[True].abs().max() > 0


def test_relation_distillation_says_when_the_teachers_last_block_is_not_kept():
    t = random_llama(layers=4)
    calib = Calibration(ids(batch=2, seq=16))
    res = harness.compress(copy.deepcopy(t), "distill:loss=relation,layers=2,steps=1,batch=2", calib)
    assert any("is teacher block 2, not the teacher's last (3)" in n for n in res.notes), res.notes
    res = harness.compress(copy.deepcopy(t), "distill:loss=relation,layers=2,steps=1,batch=2,select=spread", calib)
    assert not any("not the teacher's last" in n for n in res.notes)


def test_encoder_students_distill_with_every_loss():
    t = random_bert()
    calib = Calibration(ids(batch=4, seq=16))
    res = harness.compress(copy.deepcopy(t), "distill:loss=logits+hidden+relation,layers=1,steps=3,batch=2",
                           calib, kind="encoder")
    assert res.model.config.num_hidden_layers == 1 and res.figures["train.steps"] == 3
    assert any("encoder: no hard labels" in n for n in res.notes)


def test_gpt2_students_distill_at_reduced_depth():
    from conftest import random_gpt2

    res = harness.compress(random_gpt2(), "distill:loss=logits+hidden+relation,layers=1,steps=2,batch=2",
                           Calibration(ids(batch=2, seq=16)))
    assert res.model.config.n_layer == 1 and torch.isfinite(res.model(input_ids=ids()).logits).all()


def test_hidden_loss_needs_hidden_states():
    from transformers import LlamaForCausalLM

    class NoHidden(LlamaForCausalLM):
        def forward(self, *a, **kw):
            out = super().forward(*a, **kw)
            out.hidden_states = None
            return out

    t = random_llama()
    t.__class__ = NoHidden
    with pytest.raises(SpecError, match=r"loss=hidden needs hidden states, but NoHidden returns none; "
                                        r"allowed without them: logits, relation"):
        harness.compress(t, "distill:loss=hidden,steps=1,batch=2", Calibration(ids(batch=2, seq=8)))


def test_train_figures_reach_records_through_the_evaluation_path(tiny_lm):
    from harness.evaluation import compress_and_measure

    calib = harness.get_calibration(tiny_lm.tokenizer, n=4, seq_len=32)
    want = ["train.steps", "train.tokens", "train.loss_last", "size.params"]
    res, recs = compress_and_measure(tiny_lm, "distill:layers=1,steps=2,batch=2,seq_len=32", want,
                                     calibration=calib, deltas=False)
    by = {r.metric: r for r in recs}
    assert by["train.steps"].value == 2 and by["train.tokens"].value == 128 and by["train.loss_last"].value > 0
    assert by["size.params"].value < sum(p.numel() for p in tiny_lm.model.parameters())
    _, recs = compress_and_measure(tiny_lm, "rtn:bits=8", ["train.steps"], deltas=False)
    assert recs[0].value is None and "does not train" in recs[0].reason
