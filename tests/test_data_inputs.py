"""Tests for llmjax.data.inputs and records: JSONL, Parquet and Hugging Face datasets read as
corpora (the same token stream as the same documents of plain text, each followed by the
tokenizer's separator), the split by documents, and the errors for bad inputs."""

import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmjax.data import BPETokenizer, ByteTokenizer, CharTokenizer, build_tokenizer, prepare_data
from llmjax.data.documents import in_validation
from llmjax.data.inputs import InputOptions, detect_format, open_documents
from llmjax.data.instruct import load_jsonl
from llmjax.data.preference import load_pairs
from llmjax.errors import DataError

DOCS = [
    "the quick brown fox jumps over the lazy dog\n",
    "naïve café — 東京 🙂",
    "def add(a, b):\n    return a + b\n\n",
    "<|eos|> is text here, not the separator",
    *[f"line {i}: more words of the corpus, some repeated, some not {i * i}" for i in range(40)],
]


@pytest.fixture(autouse=True)
def env_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMJAX_CACHE_DIR", str(tmp_path / "env-cache"))


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def jsonl(tmp_path):
    return _write_jsonl(tmp_path / "docs.jsonl", [{"id": i, "text": d} for i, d in enumerate(DOCS)])


@pytest.fixture
def parquet(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": list(range(len(DOCS))), "text": DOCS}), path, row_group_size=7)
    return path


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(" ".join(DOCS) * 20, vocab_size=300)


def _stream(data):
    return np.concatenate([data.train, data.val]).astype(np.int64)


def _expected(tokenizer, docs=DOCS):
    """The plain text of each document, encoded alone, followed by the separator."""
    sep = tokenizer.document_separator
    return np.concatenate([np.concatenate([tokenizer.encode_bytes(d.encode()), sep]) for d in docs])


def _tokenizers(bpe):
    return [ByteTokenizer(), CharTokenizer.from_text("".join(DOCS) + "\n"), bpe]


def test_separator_is_eos_or_a_blank_line(bpe):
    assert ByteTokenizer().document_separator.tolist() == [257]
    assert bpe.document_separator.tolist() == [bpe.eos_id] == [1]
    char = CharTokenizer.from_text("ab\n")
    assert char.decode(char.document_separator) == "\n\n"


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_records_give_the_plain_text_stream_with_separators(kind, jsonl, parquet, bpe, tmp_path):
    path = {"jsonl": jsonl, "parquet": parquet}[kind]
    for tok in _tokenizers(bpe):
        data = prepare_data(path, tok, cache_dir=tmp_path / "cache", progress=False)
        np.testing.assert_array_equal(_stream(data), _expected(tok))
        assert data.corpus_name == path.name


def test_char_and_bpe_built_from_records_are_those_of_their_text(jsonl, tmp_path):
    char = prepare_data(jsonl, "char", cache_dir=tmp_path / "cache").tokenizer
    assert char == CharTokenizer.from_text("".join(DOCS) + "\n\n")
    data = prepare_data(jsonl, "bpe", bpe_vocab_size=300, cache_dir=tmp_path / "cache")
    assert data.tokenizer == BPETokenizer.train(DOCS, vocab_size=300)
    np.testing.assert_array_equal(_stream(data), _expected(data.tokenizer))


def test_a_folder_of_jsonl_files_is_read_in_order(tmp_path, bpe):
    folder = tmp_path / "shards"
    folder.mkdir()
    _write_jsonl(folder / "b.jsonl", [{"text": d} for d in DOCS[2:]])
    _write_jsonl(folder / "a.jsonl", [{"text": d} for d in DOCS[:2]])
    assert detect_format(folder) == "jsonl"
    data = prepare_data(folder, bpe, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(_stream(data), _expected(bpe))


def test_null_and_empty_texts_are_skipped(tmp_path):
    path = tmp_path / "gaps.parquet"
    pq.write_table(pa.table({"text": ["one", None, "", "two", "three"]}), path)
    data = prepare_data(path, "byte", val_fraction=0.3, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(
        _stream(data), _expected(ByteTokenizer(), ["one", "two", "three"])
    )


def test_format_is_told_by_the_name_and_can_be_forced(jsonl, parquet, tmp_path):
    assert [detect_format(p) for p in (jsonl, parquet, None, "hf:x/y")] == [
        "jsonl",
        "parquet",
        "text",
        "datasets",
    ]
    raw = prepare_data(jsonl, "byte", cache_dir=tmp_path / "c", options=InputOptions(format="text"))
    assert bytes(_stream(raw).astype(np.uint8)) == jsonl.read_bytes()


def test_text_field_names_the_field(tmp_path):
    path = _write_jsonl(tmp_path / "b.jsonl", [{"body": d, "text": "x"} for d in DOCS[:6]])
    data = prepare_data(
        path, "byte", cache_dir=tmp_path / "c", options=InputOptions(text_field="body")
    )
    np.testing.assert_array_equal(_stream(data), _expected(ByteTokenizer(), DOCS[:6]))


def test_records_are_tokenized_once(jsonl, tmp_path, monkeypatch):
    first = prepare_data(jsonl, "byte", cache_dir=tmp_path / "cache")
    monkeypatch.setattr(ByteTokenizer, "encode_batch", lambda *a: pytest.fail("not cached"))
    again = prepare_data(jsonl, "byte", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(_stream(again), _stream(first))
    other = prepare_data(
        jsonl, "byte", cache_dir=tmp_path / "cache", options=InputOptions(format="text")
    )
    assert len(other.train) != len(first.train)  # another format, another cache entry


# ----------------------------------------------------------------------------- datasets


@pytest.fixture(scope="module")
def datasets():
    return pytest.importorskip("datasets")  # in the test extra; skipped only without it


def test_saved_dataset_gives_the_same_stream(datasets, tmp_path, bpe):
    datasets.Dataset.from_dict({"text": DOCS, "n": list(range(len(DOCS)))}).save_to_disk(
        tmp_path / "ds"
    )
    assert detect_format(tmp_path / "ds") == "datasets"
    for streaming in (False, True):
        options = InputOptions(streaming=streaming)
        data = prepare_data(tmp_path / "ds", bpe, cache_dir=tmp_path / "c", options=options)
        np.testing.assert_array_equal(_stream(data), _expected(bpe))


def test_dataset_dict_split_is_chosen(datasets, tmp_path):
    splits = {"train": DOCS[:10], "test": DOCS[10:]}
    datasets.DatasetDict(
        {k: datasets.Dataset.from_dict({"text": v}) for k, v in splits.items()}
    ).save_to_disk(tmp_path / "dd")
    data = prepare_data(
        tmp_path / "dd",
        "byte",
        cache_dir=tmp_path / "c",
        options=InputOptions(dataset_split="test"),
    )
    np.testing.assert_array_equal(_stream(data), _expected(ByteTokenizer(), DOCS[10:]))
    with pytest.raises(DataError, match=r"no split 'dev' \(its splits: 'train', 'test'\)"):
        open_documents(tmp_path / "dd", InputOptions(dataset_split="dev"))


@pytest.fixture
def hub_cache(datasets, tmp_path, monkeypatch):
    """A hub dataset `someone/tiny` as `load_dataset` leaves it in the cache (prepared Arrow
    files), made offline from a local JSONL file."""
    from datasets.packaged_modules.json.json import Json

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    source = _write_jsonl(tmp_path / "src.jsonl", [{"text": d} for d in DOCS])
    builder = Json(
        cache_dir=str(cache),
        dataset_name="tiny",
        data_files={"train": str(source)},
        hash="0123abcd",
        config_id="default",
    )
    builder.download_and_prepare()
    (cache / "tiny").rename(cache / "someone___tiny")
    return cache


@pytest.mark.parametrize("streaming", [False, True])
def test_cached_hub_dataset_by_name_offline(hub_cache, tmp_path, streaming, bpe, monkeypatch):
    import datasets

    # An IterableDataset imports torch where it is installed (7 s here), which this test does
    # not need.
    monkeypatch.setattr(datasets.config, "TORCH_AVAILABLE", False)
    options = InputOptions(streaming=streaming)
    data = prepare_data("hf:someone/tiny", bpe, cache_dir=tmp_path / "c", options=options)
    np.testing.assert_array_equal(_stream(data), _expected(bpe))
    assert data.corpus_name == "someone/tiny"


def test_hub_dataset_not_in_the_cache_is_named(hub_cache):
    with pytest.raises(DataError, match="'someone/other'.*not in the local datasets cache"):
        open_documents("hf:someone/other")


def test_dataset_without_the_text_field_lists_its_columns(datasets, tmp_path):
    datasets.Dataset.from_dict({"body": ["a"], "id": [1]}).save_to_disk(tmp_path / "ds")
    with pytest.raises(DataError, match=r"has no field 'text' \(its fields: 'body', 'id'\)"):
        open_documents(tmp_path / "ds")


def test_directory_that_is_not_a_dataset(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("just text\n")
    with pytest.raises(DataError, match="is not a dataset directory.*save_to_disk"):
        open_documents(tmp_path / "plain", InputOptions(format="datasets"))


# ----------------------------------------------------------------------------- split


def _documents_of(ids, tok):
    """The texts between separators (each document ends with one)."""
    ids = np.asarray(ids, np.int64)
    pieces = np.split(ids, np.flatnonzero(ids == tok.eos_id) + 1)
    assert len(pieces[-1]) == 0
    return [tok.decode(p[:-1]) for p in pieces[:-1]]


def test_split_by_documents_holds_out_whole_documents(jsonl, tmp_path):
    tok = ByteTokenizer()
    split = dict(val_fraction=0.3, val_split="documents", cache_dir=tmp_path / "c")
    data = prepare_data(jsonl, tok, **split)
    held = [d for d in DOCS if in_validation(d.encode(), 0.3)]
    assert 0.1 < len(held) / len(DOCS) < 0.5
    assert _documents_of(data.val, tok) == held
    assert _documents_of(data.train, tok) == [d for d in DOCS if d not in held]
    np.testing.assert_array_equal(prepare_data(jsonl, tok, **split).val, data.val)


def test_split_by_documents_of_a_text_folder(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    files = {f"f{i:02d}.txt": f"file {i}\n" * 5 for i in range(30)}
    for name, text in files.items():
        (folder / name).write_text(text)
    data = prepare_data(
        folder, "byte", val_fraction=0.3, val_split="documents", cache_dir=tmp_path / "c"
    )
    held = [name for name in files if in_validation(name.encode(), 0.3)]
    assert 0 < len(held) < len(files)
    assert ByteTokenizer().decode(data.val) == "".join(files[n] for n in held)
    assert ByteTokenizer().decode(data.train) == "".join(
        text for n, text in files.items() if n not in held
    )


def test_split_by_documents_of_one_file_says_what_to_do(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("a single document\n" * 50)
    with pytest.raises(ValueError, match="single text file is one document.*val_split=tail"):
        prepare_data(path, "byte", val_split="documents", cache_dir=tmp_path / "c")


# ----------------------------------------------------------------------------- errors


def test_jsonl_without_the_text_field_lists_its_fields(tmp_path):
    path = _write_jsonl(tmp_path / "x.jsonl", [{"body": "a", "id": 1}])
    with pytest.raises(DataError, match=r"line 1 has no field 'text' \(its fields: 'body', 'id'\)"):
        prepare_data(path, "byte", cache_dir=tmp_path / "c")


def test_parquet_without_the_text_field_lists_its_columns(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"body": ["a"], "n": [1]}), path)
    with pytest.raises(
        DataError, match=r"has no field 'text' \(its fields: 'body', 'n'\).*text_field=body"
    ):
        open_documents(path)


def test_text_field_that_is_not_text(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), path)
    with pytest.raises(DataError, match="column 'text' holds int64, not text"):
        open_documents(path)
    bad = _write_jsonl(tmp_path / "x.jsonl", [{"text": "ok"}, {"text": ["a", "list"]}])
    with pytest.raises(DataError, match="line 2: field 'text' is a list, not text"):
        prepare_data(bad, "byte", cache_dir=tmp_path / "c")


@pytest.mark.parametrize(
    ("module", "extra", "make"),
    [("pyarrow", "parquet", "parquet"), ("datasets", "datasets", "hf:someone/tiny")],
)
def test_missing_optional_package_names_the_extra(module, extra, make, tmp_path, monkeypatch):
    path = tmp_path / "x.parquet" if make == "parquet" else make
    if make == "parquet":
        pq.write_table(pa.table({"text": ["a"]}), path)
    for name in list(sys.modules):
        if name == module or name.startswith(module + "."):
            monkeypatch.setitem(sys.modules, name, None)  # `import` raises ImportError
    with pytest.raises(
        DataError, match=rf"needs the optional package '{module}'.*llmjax\[{extra}\]"
    ):
        open_documents(path)


# ----------------------------------------------------------------------------- chat and pairs


def test_conversations_and_pairs_from_parquet_equal_jsonl(tmp_path):
    chats = [
        {"prompt": "hi", "response": "hello", "system": "be brief"},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    ]
    jsonl = _write_jsonl(tmp_path / "chats.jsonl", chats)
    # One column per field any record has; a record without it holds a null there.
    pq.write_table(pa.Table.from_struct_array(pa.array(chats)), tmp_path / "chats.parquet")
    assert load_jsonl(tmp_path / "chats.parquet") == load_jsonl(jsonl)
    # A Parquet column has one type: prompts as text in one file, as messages in another.
    for name, pairs in {
        "text": [{"prompt": "q", "chosen": "good", "rejected": "bad"}],
        "messages": [
            {"prompt": [{"role": "user", "content": "q2"}], "chosen": "yes", "rejected": "no"}
        ],
    }.items():
        pairs_jsonl = _write_jsonl(tmp_path / f"{name}.jsonl", pairs)
        pq.write_table(pa.Table.from_pylist(pairs), tmp_path / f"{name}.parquet")
        assert load_pairs(tmp_path / f"{name}.parquet") == load_pairs(pairs_jsonl)


def test_rl_prompts_from_parquet_equal_jsonl(tmp_path):
    from llmjax.align.rollout import load_prompts
    from llmjax.errors import ConfigError

    prompts = [{"prompt": "2+2=", "id": 1}, {"prompt": "3+5=", "id": 2}]
    jsonl = _write_jsonl(tmp_path / "p.jsonl", prompts)
    pq.write_table(pa.Table.from_pylist(prompts), tmp_path / "p.parquet")
    assert load_prompts(str(tmp_path / "p.parquet")) == load_prompts(str(jsonl)) == ["2+2=", "3+5="]
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok"}, {"question": "?"}])
    with pytest.raises(ConfigError, match="bad.jsonl, line 2: not a record with a non-empty"):
        load_prompts(str(bad))


def test_bpe_built_from_documents_equals_bpe_built_from_bytes(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("".join(DOCS) * 3)
    from llmjax.data.corpus import read_corpus, text_documents

    small = text_documents(path, block_bytes=97)
    built = build_tokenizer("bpe", small, bpe_vocab_size=300, cache_dir=tmp_path / "a")
    assert built == build_tokenizer("bpe", read_corpus(path).data, bpe_vocab_size=300,
                                    cache_dir=tmp_path / "b")  # fmt: skip
