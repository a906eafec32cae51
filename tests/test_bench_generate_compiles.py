"""The compile benchmark's session is fixed and varied; its quick run counts compiles (slow:
four fresh processes)."""

import pytest

from experiments import bench_generate_compiles as bench


def test_the_session_is_fixed_and_varied():
    session = bench.session_requests(20)
    assert session == bench.session_requests(20) and len(session) == 20
    batches = {len(r["prompts"]) for r in session}
    lengths = {len(p) for r in session for p in r["prompts"]}
    new = {r["max_new_tokens"] for r in session}
    assert len(batches) >= 5 and min(lengths) >= 3 and max(lengths) <= 60 and len(new) >= 15
    assert all(0.5 <= r["temperature"] < 1 for r in session)  # no stage switches off


@pytest.mark.slow
def test_bucketed_sessions_compile_a_few_programs():
    result = bench.main(["--quick"])
    bucketed, exact = result["sessions"]["bucketed"], result["sessions"]["exact"]
    assert bucketed["decode_programs"] <= 4 < exact["decode_programs"]
    assert bucketed["tokens_sha256"] == exact["tokens_sha256"]  # the same tokens
    assert result["sessions"]["bucketed_warm_cache"]["persistent_cache_hits"] >= 2
