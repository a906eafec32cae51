"""The tokenization benchmark's corpus and report (speed itself is not tested)."""

import pytest

from experiments import bench_tokenize


def test_generated_corpus_has_the_size_asked_and_reads_as_text(tmp_path):
    path = tmp_path / "c.txt"
    assert bench_tokenize.write_corpus(path, 2_500_000) == 2_500_000 == path.stat().st_size
    text = path.read_bytes().decode("utf-8", errors="ignore")  # the last character may be cut
    lines = text.split("\n")
    assert len(lines) > 10_000 and "\n\n" in text and "é" in text
    assert bench_tokenize.write_corpus(tmp_path / "d.txt", 1000) == 1000


def test_bench_tokenize_rejects_a_bad_size():
    with pytest.raises(SystemExit):
        bench_tokenize.main(["--size-mb", "0"])


@pytest.mark.slow  # two fresh processes import llmjax: about a minute on a busy 2-core machine
def test_bench_tokenize_reports_both_tokenizers(tmp_path, capsys):
    report = bench_tokenize.main(["--size-mb", "0.5", "--out-dir", str(tmp_path)])
    byte, bpe = report["results"]
    assert byte["tokenizer"] == "byte" and byte["tokens"] == 500_000 == report["size_mb"] * 1e6
    assert 1 < bpe["bytes_per_token"] < 10 and bpe["peak_rss_mb"] >= bpe["import_rss_mb"]
    assert '"mb_per_s"' in capsys.readouterr().out
    assert (tmp_path / "bench_tokenize" / "metrics.json").is_file()
