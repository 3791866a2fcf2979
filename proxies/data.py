"""Corpora, tokenizers and deterministic batches.

Sources (`data.source`): `stdlib` (embedded default: this Python's standard-library sources, so no
download is ever needed), `text` (a file, directory or glob), `tokens` (nanoGPT-style flat .bin
files), `hf` (a HF `datasets` name or a local dataset directory). Tokenizers (`data.tokenizer`):
`byte`, `bpe` (trained on the corpus, cached) or a path to `tokenizer.json` / SentencePiece
`.model`.

Text is split into train / held-out validation *by document* (file), tokenized once and cached
under the cache dir keyed by the corpus hash, which every run records. Batches are a pure function
of (seed, step), so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from proxies.config import ConfigError, DataConfig, DataSource, TokenDtype, unhandled
from proxies.rundir import atomic_write, atomic_write_text

EVAL_STREAM = 1_000_003  # rng stream id of the fixed held-out batches, apart from train steps


class DataError(ConfigError):
    """Missing or unreadable data; one line naming the fix."""


@dataclass
class Dataset:
    train: np.ndarray  # flat token ids, uint16 or uint32
    val: np.ndarray
    vocab_size: int
    corpus_hash: str
    description: str


def cache_dir(cfg: DataConfig) -> Path:
    d = cfg.cache_dir or os.environ.get("PROXIES_CACHE") or Path.home() / ".cache" / "proxies"
    return Path(d).expanduser()


# ---------------------------------------------------------------------------------- documents

def stdlib_files() -> List[Path]:
    """CPython's standard-library .py files, site-packages excluded (it differs per machine)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py")
             if "site-packages" not in p.parts and "dist-packages" not in p.parts]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def text_files(pattern: str) -> List[Path]:
    p = Path(pattern).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
    elif p.is_file():
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
    if not files:
        raise DataError(f"no text files at data.path={pattern!r}; point it at a file, dir or glob")
    return files


def read_docs(files: Sequence[Path]) -> List[str]:
    # Bad UTF-8 (a few stdlib test files) decodes with replacement characters, never an error.
    return [f.read_bytes().decode("utf-8", errors="replace") for f in files]


def hf_docs(cfg: DataConfig) -> Tuple[List[str], Optional[List[str]]]:
    try:
        import datasets
    except ImportError:
        raise DataError("data.source=hf needs `datasets`; pip install 'proxies[hf]'") from None
    def load(split: str):
        if cfg.path:
            if not Path(cfg.path).expanduser().exists():
                raise DataError(f"no dataset directory at data.path={cfg.path!r}; fix the path")
            ds = datasets.load_from_disk(str(Path(cfg.path).expanduser()))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"split {split!r} not in {list(ds)}; set data.hf_split")
                ds = ds[split]
            return ds
        if not cfg.hf_name:
            raise DataError("data.source=hf needs data.hf_name or data.path (a local dataset)")
        return datasets.load_dataset(cfg.hf_name, cfg.hf_config, split=split)
    def texts(ds) -> List[str]:
        if cfg.text_field not in ds.column_names:
            raise DataError(f"no column {cfg.text_field!r} in {ds.column_names}; "
                            "set data.text_field")
        n = len(ds) if cfg.max_docs is None else min(cfg.max_docs, len(ds))
        return list(ds.select(range(n))[cfg.text_field])
    train = texts(load(cfg.hf_split))
    val = texts(load(cfg.hf_val_split)) if cfg.hf_val_split else None
    return train, val


def split_docs(names: Sequence[str], val_fraction: float) -> np.ndarray:
    """Boolean 'is validation' per document, from a hash of its name: stable as corpora grow."""
    h = np.array([int(hashlib.sha1(n.encode()).hexdigest()[:8], 16) for n in names])
    is_val = (h % 10_000) < val_fraction * 10_000
    if len(names) > 1 and (is_val.all() or not is_val.any()):
        is_val = np.zeros(len(names), bool)
        is_val[-1] = True  # always at least one document on each side
    return is_val


def split_one_doc(doc: str, val_fraction: float) -> Tuple[List[str], List[str]]:
    """([head], [tail]) of a single document: the last `val_fraction` of it, from the line
    break nearest that point, is held out."""
    cut = int(len(doc) * (1 - val_fraction))
    line = doc.rfind("\n", 0, cut)
    cut = line + 1 if line > 0 else cut
    return [doc[:cut]], [doc[cut:]]


def corpus_hash(docs: Sequence[str], names: Sequence[str]) -> str:
    h = hashlib.sha256()
    for n, d in zip(names, docs):
        h.update(n.encode())
        h.update(b"\0")
        h.update(d.encode("utf-8", errors="replace"))
        h.update(b"\0")
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------- tokenizers

class Tokenizer:
    """`encode_docs` maps documents to id arrays; `vocab_size` counts ids; `eot` separates docs."""

    name: str
    vocab_size: int
    eot: Optional[int]

    def encode_docs(self, docs: Sequence[str]) -> List[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError


class ByteTokenizer(Tokenizer):
    name, vocab_size, eot = "byte", 256, None

    def encode_docs(self, docs):
        return [np.frombuffer(d.encode("utf-8", errors="replace"), np.uint8) for d in docs]


class HFTokenizer(Tokenizer):
    def __init__(self, tok, name: str, eot_token: Optional[str] = None):
        self.tok, self.name = tok, name
        self.vocab_size = tok.get_vocab_size()
        self.eot = tok.token_to_id(eot_token) if eot_token else None

    def encode_docs(self, docs):
        return [np.asarray(e.ids, np.uint32) for e in self.tok.encode_batch(list(docs))]


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, path: Path):
        try:
            import sentencepiece as spm
        except ImportError:
            raise DataError("a SentencePiece .model needs `sentencepiece`; "
                            "pip install 'proxies[spm]'") from None
        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        self.name, self.vocab_size = f"spm:{path.name}", self.sp.get_piece_size()
        self.eot = self.sp.eos_id() if self.sp.eos_id() >= 0 else None

    def encode_docs(self, docs):
        return [np.asarray(ids, np.uint32) for ids in self.sp.encode(list(docs))]


def train_bpe(docs: Sequence[str], vocab_size: int, out_file: Path) -> None:
    """Byte-level BPE with HF tokenizers; `<|endoftext|>` separates documents."""
    from tokenizers import Tokenizer as HFTok, decoders, models, pre_tokenizers, trainers
    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(docs, trainer=trainer)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_file, tok.to_str())


def make_tokenizer(cfg: DataConfig, train_docs: Callable[[], Sequence[str]],
                   key: str) -> Tokenizer:
    """`train_docs` is only called when a BPE must be trained; `key` names the corpus in the
    cache."""
    spec = cfg.tokenizer
    if spec == "byte":
        return ByteTokenizer()
    from tokenizers import Tokenizer as HFTok
    if spec == "bpe":
        path = cache_dir(cfg) / "tokenizers" / f"bpe{cfg.bpe_vocab_size}-{key}.json"
        if not path.exists():
            # Said aloud: on a large corpus this takes a minute or more, once per corpus and size.
            print(f"training a byte-level BPE tokenizer (vocab {cfg.bpe_vocab_size}) on the "
                  f"training documents, once; cached at {path}", flush=True)
            t0 = time.time()
            train_bpe(train_docs(), cfg.bpe_vocab_size, path)
            print(f"tokenizer trained in {time.time() - t0:.0f} s", flush=True)
        return HFTokenizer(HFTok.from_file(str(path)), f"bpe{cfg.bpe_vocab_size}",
                           "<|endoftext|>")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise DataError(f"no tokenizer file at data.tokenizer={spec!r}; use byte, bpe or a path "
                        "to tokenizer.json / a SentencePiece .model")
    if path.suffix == ".model":
        return SentencePieceTokenizer(path)
    try:
        tok = HFTok.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on a bad file
        raise DataError(f"cannot read tokenizer {spec!r} ({str(e).splitlines()[0]}); "
                        "give a HF tokenizer.json or a SentencePiece .model") from None
    eot = next((t for t in ("<|endoftext|>", "</s>", "<eos>") if tok.token_to_id(t) is not None),
               None)
    file_hash = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    return HFTokenizer(tok, f"file:{path.name}:{file_hash}", eot)


def join_docs(ids: Sequence[np.ndarray], eot: Optional[int], vocab_size: int) -> np.ndarray:
    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
    parts = []
    for a in ids:
        parts.append(a.astype(dtype, copy=False))
        if eot is not None:
            parts.append(np.array([eot], dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


# ----------------------------------------------------------------------------------- datasets

def _cached_tokens(cfg: DataConfig, key: str, build: Callable[[], Tuple[np.ndarray, np.ndarray]]):
    d = cache_dir(cfg) / "tokens" / key
    tr, va = d / "train.npy", d / "val.npy"
    if not (tr.exists() and va.exists()):
        train, val = build()
        d.mkdir(parents=True, exist_ok=True)
        # Sweep workers on a fresh machine build the same cache at once: each writes its own
        # temporary, and the renames leave one whole file.
        for arr, f in ((train, tr), (val, va)):
            atomic_write(f, lambda h, a=arr: np.save(h, a), "wb")
    return np.load(tr, mmap_mode="r"), np.load(va, mmap_mode="r")


def _text_dataset(cfg: DataConfig, names: List[str], docs: List[str],
                  val_docs: Optional[List[str]], what: str) -> Dataset:
    if val_docs is None and len(docs) == 1:  # one file: hold out its tail, not all of it
        train_docs, val_docs = split_one_doc(docs[0], cfg.val_fraction)
    elif val_docs is None:
        is_val = split_docs(names, cfg.val_fraction)
        train_docs = [d for d, v in zip(docs, is_val) if not v]
        val_docs = [d for d, v in zip(docs, is_val) if v]
    else:
        train_docs = docs
    h = corpus_hash(docs + val_docs, names + [f"val:{i}" for i in range(len(val_docs))])
    tok = make_tokenizer(cfg, lambda: train_docs, h)
    key = f"{h}-{tok.name.replace(':', '_').replace('/', '_')}-v{cfg.val_fraction}"

    def build():
        return (join_docs(tok.encode_docs(train_docs), tok.eot, tok.vocab_size),
                join_docs(tok.encode_docs(val_docs), tok.eot, tok.vocab_size))

    train, val = _cached_tokens(cfg, key, build)
    return Dataset(train, val, tok.vocab_size, h,
                   f"{what}: {len(train_docs)} train / {len(val_docs)} val docs, "
                   f"{len(train):,} train tokens ({tok.name})")


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load (building and caching on first use) the token streams `cfg` describes."""
    match cfg.source:
        case DataSource.tokens:
            return _token_dataset(cfg)
        case DataSource.stdlib:
            files = stdlib_files()
            root = Path(sysconfig.get_paths()["stdlib"])
            names = [f.relative_to(root).as_posix() for f in files]
            return _text_dataset(cfg, names, read_docs(files), None, "stdlib")
        case DataSource.text:
            if not cfg.path:
                raise DataError("data.source=text needs data.path (a file, directory or glob)")
            files = text_files(cfg.path)
            return _text_dataset(cfg, [f.as_posix() for f in files], read_docs(files), None,
                                 f"text {cfg.path}")
        case DataSource.hf:
            docs, val_docs = hf_docs(cfg)
            name = cfg.path or f"{cfg.hf_name}/{cfg.hf_config}"
            return _text_dataset(cfg, [f"{name}:{i}" for i in range(len(docs))], docs, val_docs,
                                 f"hf {name}")
        case _:
            unhandled("data.source", cfg.source)


def _other_token_dtype(dtype: TokenDtype | str) -> TokenDtype:
    """The width a token file may have been written with instead."""
    match dtype:
        case TokenDtype.uint16:
            return TokenDtype.uint32
        case TokenDtype.uint32:
            return TokenDtype.uint16
        case _:
            unhandled("data.token_dtype", dtype)


def _token_dataset(cfg: DataConfig) -> Dataset:
    """data.source=tokens: the train and val .bin files as they are."""
    arrays = []
    for k in ("train_bin", "val_bin"):
        p = getattr(cfg, k)
        if not p or not Path(p).expanduser().is_file():
            raise DataError(f"no token file at data.{k}={p!r}; point it at a .bin file")
        arrays.append(token_file(Path(p).expanduser(), cfg.token_dtype, k))
    if not cfg.vocab_size:
        raise DataError("data.source=tokens needs data.vocab_size (the ids' vocabulary)")
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.asarray(a[: 1 << 20]).tobytes())
        h.update(str(len(a)).encode())
    hi = max(int(a.max()) for a in arrays)
    if hi >= cfg.vocab_size:
        other = _other_token_dtype(cfg.token_dtype)
        raise DataError(f"token id {hi} >= data.vocab_size={cfg.vocab_size}; set the "
                        f"vocabulary the ids come from (or data.token_dtype={other} if the "
                        "file was written so)")
    return Dataset(arrays[0], arrays[1], int(cfg.vocab_size), h.hexdigest()[:16],
                   f"tokens: {len(arrays[0]):,} train tokens")


# ------------------------------------------------------------------------------------ batches

def token_file(path: Path, dtype: TokenDtype | str, key: str) -> np.ndarray:
    """A flat token file as a read-only array, refusing the two silent misreads: a size that is
    not a whole number of ids, and uint32 ids read as uint16 (every second value zero)."""
    dtype = TokenDtype(dtype)
    size, width = path.stat().st_size, np.dtype(dtype.value).itemsize
    if size % width:
        raise DataError(f"data.{key}={str(path)!r} has {size} bytes, not a multiple of "
                        f"{width} ({dtype}); set data.token_dtype=uint16 if it holds uint16 ids")
    ids = np.memmap(path, dtype=dtype.value, mode="r")
    head = np.asarray(ids[: 1 << 20])
    if dtype is TokenDtype.uint16 and len(head) >= 64 and not head[1::2].any() and head[0::2].any():
        raise DataError(f"data.{key}={str(path)!r} looks like uint32 ids read as uint16 (every "
                        "second value is 0); set data.token_dtype=uint32")
    return ids


def sample_batch(tokens: np.ndarray, batch_size: int, seq_len: int, seed: int,
                 stream: int) -> np.ndarray:
    """(batch_size, seq_len + 1) int32 windows at offsets drawn from rng(seed, stream)."""
    n = len(tokens) - seq_len - 1
    if n <= 0:
        raise DataError(f"only {len(tokens)} tokens, fewer than train.seq_len+1={seq_len + 1}; "
                        "use more data or a shorter train.seq_len")
    offsets = np.random.default_rng([seed, stream]).integers(0, n + 1, size=batch_size)
    return np.stack([np.asarray(tokens[o: o + seq_len + 1]) for o in offsets]).astype(np.int32)


def train_batch(ds: Dataset, batch_size: int, seq_len: int, seed: int, step: int) -> np.ndarray:
    """The batch of update number `step`: a function of (seed, step) alone."""
    return sample_batch(ds.train, batch_size, seq_len, seed, step)


def eval_batches(ds: Dataset, n: int, batch_size: int, seq_len: int,
                 seed: Optional[int]) -> List[np.ndarray]:
    """Fixed held-out batches, the same at every eval of a run. seed None: the shared set, n ×
    batch_size windows spread evenly over the val split (disjoint where it is long enough), the
    same for every run of this corpus and shape; otherwise windows drawn with `seed`."""
    if seed is not None:
        return [sample_batch(ds.val, batch_size, seq_len, seed, EVAL_STREAM + i)
                for i in range(n)]
    last = len(ds.val) - seq_len - 1
    if last < 0:
        raise DataError(f"the val split has {len(ds.val)} tokens, fewer than train.seq_len+1="
                        f"{seq_len + 1}; use more data, a larger data.val_fraction or a shorter "
                        "train.seq_len")
    starts = np.linspace(0, last, n * batch_size).round().astype(np.int64)
    windows = np.stack([np.asarray(ds.val[o: o + seq_len + 1]) for o in starts]).astype(np.int32)
    return list(windows.reshape(n, batch_size, seq_len + 1))


def eval_set_hash(batches: List[np.ndarray]) -> str:
    """What identifies an eval set: a hash of its tokens (equal hashes, equal sets)."""
    h = hashlib.sha256()
    for b in batches:
        h.update(np.ascontiguousarray(b, np.int32).tobytes())
    return h.hexdigest()[:12]


def write_token_file(path: str | Path, ids: np.ndarray, dtype: str = "uint16") -> None:
    """Write ids as a flat nanoGPT-style .bin file."""
    np.asarray(ids, dtype=dtype).tofile(path)

