"""The training benchmark runs and reports consistent figures (speed itself is not tested)."""

import re

import pytest

from experiments import bench_train
from llmjax.train.bench import op_shapes


def test_bench_train_reports_step_time_throughput_and_mfu(monkeypatch, capsys):
    monkeypatch.setenv("LLMJAX_PEAK_FLOPS", "1e11")  # skip timing a matmul
    result = bench_train.main(["--preset", "test-tiny", "--steps", "2", "--warmup", "1"])
    tokens = result["batch_size"] * result["seq_len"]
    assert result["tokens_per_s"] == pytest.approx(tokens / result["ms_per_step"] * 1e3, rel=1e-2)
    assert result["matmul_peak_gflops"] == pytest.approx(100.0)
    assert result["mfu"] == pytest.approx(result["achieved_gflops"] / 100.0, rel=1e-2)
    assert result["loss_first_last"][1] < result["loss_first_last"][0]
    assert '"ms_per_step"' in capsys.readouterr().out


def test_bench_train_profile_says_where_the_step_time_goes(monkeypatch):
    monkeypatch.setenv("LLMJAX_PEAK_FLOPS", "1e11")
    argv = ["--preset", "test-tiny", "--steps", "1", "--warmup", "1", "--profile", "3"]
    profile = bench_train.main([*argv, "--top", "4"])["profile"]
    ops = profile["ops"]
    assert 1 <= len(ops) <= 4
    assert [o["ms_per_step"] for o in ops] == sorted((o["ms_per_step"] for o in ops), reverse=True)
    assert all(o["ms_per_step"] > 0 and o["calls_per_step"] > 0 for o in ops)
    assert all(not o["op"].endswith(tuple("0123456789")) for o in ops)  # grouped by kind
    assert sum(o["share"] for o in ops) <= 1.0 + 1e-6
    assert profile["op_ms_per_step"] >= sum(o["ms_per_step"] for o in ops) - 1e-2


def test_bench_train_profile_by_shape_names_result_shapes(monkeypatch):
    monkeypatch.setenv("LLMJAX_PEAK_FLOPS", "1e11")
    argv = ["--preset", "test-tiny", "--steps", "1", "--warmup", "1", "--profile", "2"]
    result = bench_train.main([*argv, "--top", "10000", "--profile-by", "shape"])
    groups = {o["shape"]: o for o in result["profile"]["ops"]}
    batch, length = result["batch_size"], result["seq_len"]
    # every op is named by its result's shape; some write [B, T, ...] activations
    assert all(re.fullmatch(r"[a-z]\w*\[[\d,]*\]|tuple|other", g) for g in groups)
    assert any(g.startswith(("f32[", "bf16[")) and f"{batch}" in g for g in groups), groups
    assert any(str(length) in g for g in groups), groups
    assert sum(o["share"] for o in groups.values()) == pytest.approx(1.0, abs=1e-3)


def test_op_shapes_reads_names_and_result_shapes_from_hlo():
    hlo = """HloModule m
ENTRY %main {
  %p.1 = f32[2,3]{1,0} parameter(0)
  %dot.7 = f32[2,2]{1,0} dot(%p.1, %p.1), lhs_contracting_dims={1}, rhs_contracting_dims={1}
  %while.2 = (s32[], f32[2,2]{1,0}) while(%t), condition=%c, body=%b
  ROOT %copy_bitcast_fusion.3 = s32[] fusion(%dot.7), kind=kLoop
}"""
    assert op_shapes(hlo) == {
        "p.1": "f32[2,3]", "dot.7": "f32[2,2]", "while.2": "tuple", "copy_bitcast_fusion.3": "s32[]"
    }  # fmt: skip


def test_bench_train_rejects_bad_flags():
    with pytest.raises(SystemExit):
        bench_train.main(["--steps", "0"])
    with pytest.raises(SystemExit):
        bench_train.main(["--profile", "-1"])
    with pytest.raises(SystemExit):
        bench_train.main(["--profile", "1", "--profile-by", "name"])
    with pytest.raises(SystemExit):
        bench_train.main(["--cpu-devices", "2"])  # JAX is already imported in this process
