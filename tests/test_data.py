"""Every data source and tokenizer, on small local data made here; batches from (seed, step)."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from proxies.config import DataConfig
from proxies.data import (DataError, load_dataset, split_docs, stdlib_files, train_batch,
                          train_bpe, write_token_file)


def dcfg(cache_dir, **kw):
    return OmegaConf.merge(OmegaConf.structured(DataConfig),
                           {"cache_dir": str(cache_dir), **kw})


def test_byte_tokenizer_on_text_dir_is_utf8_bytes_split_by_file(corpus_dir, cache_dir):
    ds = load_dataset(dcfg(cache_dir, source="text", path=str(corpus_dir)))
    assert ds.vocab_size == 256
    total = sum(len(f.read_bytes()) for f in corpus_dir.iterdir())
    assert len(ds.train) + len(ds.val) == total  # every byte, no separators
    assert len(ds.val) > 0 and len(ds.train) > len(ds.val)
    text = bytes(np.asarray(ds.train[:40], np.uint8)).decode()
    assert text in "".join(f.read_text() for f in sorted(corpus_dir.iterdir()))


def test_text_glob_and_single_file(corpus_dir, cache_dir):
    ds_glob = load_dataset(dcfg(cache_dir, source="text", path=str(corpus_dir / "doc_0*.txt")))
    ds_all = load_dataset(dcfg(cache_dir, source="text", path=str(corpus_dir)))
    assert 0 < len(ds_glob.train) < len(ds_all.train)
    assert ds_glob.corpus_hash != ds_all.corpus_hash


def test_bad_utf8_decodes_with_replacement(tmp_path, cache_dir):
    (tmp_path / "a.txt").write_bytes(b"ok \xff\xfe bytes" * 50)
    (tmp_path / "b.txt").write_bytes(b"more text here " * 50)
    ds = load_dataset(dcfg(cache_dir, source="text", path=str(tmp_path)))
    assert len(ds.train) + len(ds.val) > 0


def test_cache_is_reused_and_hash_is_stable(corpus_dir, cache_dir):
    a = load_dataset(dcfg(cache_dir, source="text", path=str(corpus_dir)))
    b = load_dataset(dcfg(cache_dir, source="text", path=str(corpus_dir)))
    assert a.corpus_hash == b.corpus_hash
    np.testing.assert_array_equal(a.train, b.train)
    assert list((cache_dir / "tokens").glob(f"{a.corpus_hash}*"))


def test_bpe_trained_on_corpus_and_cached(corpus_dir, cache_dir, capsys):
    ds = load_dataset(dcfg(cache_dir, source="text", path=str(corpus_dir), tokenizer="bpe",
                           bpe_vocab_size=300))
    assert "training a byte-level BPE tokenizer (vocab 300)" in capsys.readouterr().out
    load_dataset(dcfg(cache_dir, source="text", path=str(corpus_dir), tokenizer="bpe",
                      bpe_vocab_size=300))
    assert "training" not in capsys.readouterr().out  # cached: trained once, said once
    assert ds.vocab_size == 300
    byte_len = sum(len(f.read_bytes()) for f in corpus_dir.iterdir())
    assert len(ds.train) + len(ds.val) < byte_len / 1.5  # merges compress the text
    assert int(np.max(ds.train)) < 300
    assert len(list((cache_dir / "tokenizers").glob("bpe300-*.json"))) == 1


def test_tokenizer_json_file(corpus_dir, cache_dir, tmp_path):
    path = tmp_path / "tokenizer.json"
    train_bpe([f.read_text() for f in corpus_dir.iterdir()], 280, path)
    ds = load_dataset(dcfg(cache_dir, source="text", path=str(corpus_dir), tokenizer=str(path)))
    assert ds.vocab_size == 280 and int(np.max(ds.train)) < 280


def test_sentencepiece_model_file(corpus_dir, cache_dir, tmp_path):
    spm = pytest.importorskip("sentencepiece")
    spm.SentencePieceTrainer.train(input=str(corpus_dir / "doc_00.txt"),
                                   model_prefix=str(tmp_path / "sp"), vocab_size=60,
                                   model_type="bpe", minloglevel=2)
    ds = load_dataset(dcfg(cache_dir, source="text", path=str(corpus_dir),
                           tokenizer=str(tmp_path / "sp.model")))
    assert ds.vocab_size == 60 and int(np.max(ds.train)) < 60


def test_pretokenized_bin_files(tmp_path, cache_dir):
    ids = np.arange(5000) % 1000
    write_token_file(tmp_path / "train.bin", ids)
    write_token_file(tmp_path / "val.bin", ids[:500])
    ds = load_dataset(dcfg(cache_dir, source="tokens", train_bin=str(tmp_path / "train.bin"),
                           val_bin=str(tmp_path / "val.bin"), vocab_size=1000))
    np.testing.assert_array_equal(np.asarray(ds.train), ids)
    assert ds.vocab_size == 1000
    with pytest.raises(DataError, match="vocab_size"):
        load_dataset(dcfg(cache_dir, source="tokens", train_bin=str(tmp_path / "train.bin"),
                          val_bin=str(tmp_path / "val.bin"), vocab_size=10))


def test_hf_dataset_from_local_dir(tmp_path, cache_dir, corpus_dir):
    datasets = pytest.importorskip("datasets")
    texts = [f.read_text() for f in sorted(corpus_dir.iterdir())]
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": texts[:15]}),
        "validation": datasets.Dataset.from_dict({"text": texts[15:]}),
    }).save_to_disk(str(tmp_path / "c4_tiny"))
    ds = load_dataset(dcfg(cache_dir, source="hf", path=str(tmp_path / "c4_tiny"),
                           hf_val_split="validation"))
    assert len(ds.train) == sum(len(t.encode()) for t in texts[:15])
    assert len(ds.val) == sum(len(t.encode()) for t in texts[15:])
    with pytest.raises(DataError, match="text_field"):
        load_dataset(dcfg(cache_dir, source="hf", path=str(tmp_path / "c4_tiny"),
                          text_field="body"))


def test_missing_inputs_are_data_errors(tmp_path, cache_dir, corpus_dir):
    with pytest.raises(DataError, match="data.path"):
        load_dataset(dcfg(cache_dir, source="text", path=str(tmp_path / "nothing_here")))
    with pytest.raises(DataError, match="data.train_bin"):
        load_dataset(dcfg(cache_dir, source="tokens", train_bin=str(tmp_path / "x.bin")))
    with pytest.raises(DataError, match="tokenizer"):
        load_dataset(dcfg(cache_dir, source="text", path=str(corpus_dir),
                          tokenizer=str(tmp_path / "missing.json")))


def test_batches_are_a_function_of_seed_and_step(corpus_dir, cache_dir):
    ds = load_dataset(dcfg(cache_dir, source="text", path=str(corpus_dir)))
    a = train_batch(ds, 4, 16, seed=0, step=7)
    assert a.shape == (4, 17) and a.dtype == np.int32
    np.testing.assert_array_equal(a, train_batch(ds, 4, 16, seed=0, step=7))
    assert not np.array_equal(a, train_batch(ds, 4, 16, seed=0, step=8))
    assert not np.array_equal(a, train_batch(ds, 4, 16, seed=1, step=7))


def test_split_is_stable_and_nonempty():
    names = [f"f{i}.py" for i in range(200)]
    is_val = split_docs(names, 0.05)
    assert 0 < is_val.sum() < 30
    np.testing.assert_array_equal(is_val[:100], split_docs(names[:100], 0.05))


def test_stdlib_corpus_excludes_site_packages():
    files = stdlib_files()
    assert len(files) > 500
    assert not any("site-packages" in f.parts for f in files)


def test_a_single_text_file_is_split_by_its_tail(tmp_path, cache_dir):
    text = "".join(f"line {i} of one long document about attention logits\n" for i in range(2000))
    path = tmp_path / "one_file.txt"
    path.write_text(text)
    ds = load_dataset(dcfg(cache_dir, source="text", path=str(path), val_fraction=0.1))
    total = len(text.encode())
    assert len(ds.val) > 0.05 * total and len(ds.train) > 0.85 * total  # both sides have text
    assert bytes(ds.val[:5].astype(np.uint8)).decode() == "line "  # cut at a line break


def test_token_files_refuse_the_wrong_dtype(tmp_path, cache_dir):
    ids = np.arange(1000, dtype=np.uint32) % 300
    for name in ("train.bin", "val.bin"):
        write_token_file(tmp_path / name, ids, "uint32")
    base = dict(source="tokens", train_bin=str(tmp_path / "train.bin"),
                val_bin=str(tmp_path / "val.bin"), vocab_size=300)
    with pytest.raises(DataError, match="set data.token_dtype=uint32"):
        load_dataset(dcfg(cache_dir, **base, token_dtype="uint16"))
    ds = load_dataset(dcfg(cache_dir, **base, token_dtype="uint32"))
    np.testing.assert_array_equal(np.asarray(ds.train), ids)
    (tmp_path / "odd.bin").write_bytes(b"\x01\x00\x02")  # 3 bytes: no whole number of ids
    with pytest.raises(DataError, match="not a multiple of 2"):
        load_dataset(dcfg(cache_dir, **{**base, "train_bin": str(tmp_path / "odd.bin")}))


def test_workers_building_the_same_token_cache_at_once_both_get_it(tmp_path, monkeypatch):
    """Sweep workers on a fresh machine: each saves its arrays before either renames them."""
    import threading

    both_saved = threading.Barrier(2, timeout=10)
    real_save = np.save

    def save_then_wait(file, arr, *a, **kw):
        real_save(file, arr, *a, **kw)
        both_saved.wait()  # the other worker has saved its own copy too

    monkeypatch.setattr(np, "save", save_then_wait)
    (tmp_path / "doc.txt").write_text("some text to tokenize " * 200)
    cfg = dcfg(tmp_path / "cache", source="text", path=str(tmp_path / "doc.txt"))
    got, errors = [], []

    def worker():
        try:
            got.append(load_dataset(cfg))
        except Exception as e:  # noqa: BLE001 - the test reports what a worker raised
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    np.testing.assert_array_equal(got[0].train, got[1].train)
    assert len(got[0].train) + len(got[0].val) == len("some text to tokenize " * 200)
    assert not list((tmp_path / "cache").rglob("*.tmp*"))


def test_the_shared_eval_set_is_windows_spread_evenly_over_the_val_split():
    """The same batches whatever the seed; windows evenly spaced from the first token to the
    last, disjoint when the split is long enough; a hash that tells sets apart."""
    from proxies.data import Dataset, eval_batches, eval_set_hash
    val = np.arange(10_000) % 251
    ds = Dataset(train=val, val=val, vocab_size=256, corpus_hash="h", description="d")
    shared = eval_batches(ds, 4, 8, 16, None)
    assert [b.shape for b in shared] == [(8, 17)] * 4
    starts = np.concatenate(shared)[:, 0]
    want = np.round(np.linspace(0, 10_000 - 17, 32)).astype(int) % 251
    np.testing.assert_array_equal(starts, want)
    np.testing.assert_array_equal(np.concatenate(shared)[-1], val[-17:])  # reaches the end
    assert eval_set_hash(shared) == eval_set_hash(eval_batches(ds, 4, 8, 16, None))
    seeded = [eval_set_hash(eval_batches(ds, 4, 8, 16, s)) for s in (0, 1)]
    assert len({eval_set_hash(shared), *seeded}) == 3  # per_seed: another set per seed
    with pytest.raises(DataError, match="val split has 10 tokens"):
        eval_batches(Dataset(val[:10], val[:10], 256, "h", "d"), 1, 1, 16, None)


def test_every_run_of_a_corpus_reads_the_same_eval_set_whatever_its_seed_or_config(make_cfg):
    from proxies.train import train
    hashes = {name: train(make_cfg(*o, out=name))["eval_set_hash"] for name, o in {
        "seed0": [], "seed1": ["train.seed=1"], "qk": ["model.qk_layernorm=true",
                                                    "optim.lr=1e-2"]}.items()}
    assert len(set(hashes.values())) == 1, hashes
    per_seed = train(make_cfg("train.eval_set=per_seed", "train.seed=1", out="own"))
    assert per_seed["eval_set_hash"] != hashes["seed0"]
