"""Regenerate the embedded default assets (HH-RLHF slices + tiny tokenizer).

Usage::

    python -m trl_pro.assets.make_assets --source /path/to/harmless-base-test.jsonl.gz
    python -m trl_pro.assets.make_assets --source ... --check   # verify the shipped files, write nothing

Deterministic: the same source gives the same files (gzip headers carry no name or timestamp, BPE training
on a fixed text order is deterministic), so the shipped assets can be audited by re-running this script.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
from pathlib import Path


ASSETS_DIR = Path(__file__).resolve().parent

N_TRAIN = 1200  # first rows of the source -> train.jsonl.gz
N_TEST = 200  # last rows of the source -> test.jsonl.gz
VOCAB_SIZE = 2048
MODEL_MAX_LENGTH = 2048
# Llama-style order, so <unk>=0, <s>=1, </s>=2, <pad>=3.
SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}

# HH-RLHF turn markers. The template is prefix-consistent: rendering [user] with add_generation_prompt=True
# gives "\n\nHuman: {u}\n\nAssistant:", and [user, assistant] gives that plus " {a}", exactly the raw HH layout.
# No BOS/EOS inside the template: the trainer adds EOS to completions itself, and the tokenizer adds nothing
# on encode, so prompt ids + completion ids tokenized separately concatenate cleanly.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ '\\n\\nHuman: ' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ '\\n\\nAssistant: ' + message['content'] }}"
    "{%- else -%}"
    "{{ raise_exception('Only user and assistant roles are supported, got ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '\\n\\nAssistant:' }}"
    "{%- endif -%}"
)


README_TEMPLATE = """\
# HH-RLHF slice (harmless-base, test split)

**Content warning:** this data contains offensive, harmful and disturbing text by design (red-teaming
dialogues). It is here only to exercise the preference trainer on real data; do not use it for anything else.

- `train.jsonl.gz`: source rows 0-{train_last} (the first {n_train} rows).
- `test.jsonl.gz`: source rows {test_first}-{total_last} (the last {n_test} rows).
- Source rows {train_end}-{test_first_minus_1} ({n_unused} rows) are not shipped. No row inside either range was
  excluded or modified: each line is copied byte for byte, so `chosen`/`rejected` are the raw full dialogues
  ("\\n\\nHuman: ...\\n\\nAssistant: ...") and the prompt is implicit (their shared prefix up to the last
  "\\n\\nAssistant:").
- No shipped row has `chosen == rejected`, and every shipped pair shares its prompt (the source has
  {n_mismatch} pairs whose prompts differ, rows {mismatch_rows}; none of them is shipped).
- No train prompt equals a test prompt, but {n_shared_opening} test rows open with the same first Human turn as
  some train row (HH-RLHF reuses openings across conversations).

Source: Anthropic's hh-rlhf repository (Bai et al., 2022, "Training a Helpful and Harmless Assistant with
Reinforcement Learning from Human Feedback", arXiv:2204.05862), file `harmless-base/test.jsonl.gz`.
Licence: MIT, Copyright (c) 2022 Anthropic, see `LICENSE` in this directory.

Regenerate (with the tokenizer in `../tokenizer/`, which is trained on the train slice only):
`python -m trl_pro.assets.make_assets --source harmless-base-test.jsonl.gz`; add `--check` to verify.
"""

ASSISTANT = "\n\nAssistant:"


def _prompt(dialogue: str) -> str:
    return dialogue[: dialogue.rfind(ASSISTANT) + len(ASSISTANT)]


def render_readme(lines: list[bytes], n_train: int, n_test: int) -> str:
    """Dataset card with the row ranges and the facts checked on this exact source."""
    rows = [json.loads(line) for line in lines]
    total = len(rows)
    test_first = total - n_test
    mismatch = [i for i, r in enumerate(rows) if _prompt(r["chosen"]) != _prompt(r["rejected"])]
    if any(i < n_train or i >= test_first for i in mismatch):
        # Such rows would not fit the implicit-prompt format; keep the card honest rather than silently ship them.
        raise ValueError(f"shipped rows with differing chosen/rejected prompts: {mismatch}")

    def opening(row: dict) -> str:  # the first Human turn
        return row["chosen"].split(ASSISTANT)[0]

    train_openings = {opening(r) for r in rows[:n_train]}
    if {_prompt(r["chosen"]) for r in rows[:n_train]} & {_prompt(r["chosen"]) for r in rows[test_first:]}:
        raise ValueError("a test prompt also occurs in the train slice; update the README wording")
    return README_TEMPLATE.format(
        train_last=n_train - 1,
        n_train=n_train,
        test_first=test_first,
        total_last=total - 1,
        n_test=n_test,
        train_end=n_train,
        test_first_minus_1=test_first - 1,
        n_unused=test_first - n_train,
        n_mismatch=len(mismatch),
        mismatch_rows=", ".join(map(str, mismatch)) or "none",
        n_shared_opening=sum(opening(r) in train_openings for r in rows[test_first:]),
    )


def read_source_lines(source: Path) -> list[bytes]:
    """Raw JSON lines of the source (bytes, without the trailing newline), validated but never re-serialized."""
    with gzip.open(source, "rb") as f:
        lines = f.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # final newline
    for i, line in enumerate(lines):
        row = json.loads(line)
        if set(row) != {"chosen", "rejected"}:
            raise ValueError(f"row {i}: expected keys chosen/rejected, got {sorted(row)}")
    return lines


def select_rows(lines: list[bytes], n_train: int, n_test: int) -> tuple[list[bytes], list[bytes]]:
    """First n_train rows for train, last n_test rows for test; the two ranges must not overlap."""
    if n_train + n_test > len(lines):
        raise ValueError(f"source has {len(lines)} rows, need {n_train} + {n_test}")
    train, test = lines[:n_train], lines[len(lines) - n_test :]
    # The brief forbids silent skips: refuse degenerate pairs instead of dropping them quietly.
    for name, part in (("train", train), ("test", test)):
        for i, line in enumerate(part):
            row = json.loads(line)
            if row["chosen"] == row["rejected"]:
                raise ValueError(f"{name} row {i} has chosen == rejected; document the exclusion before skipping")
    return train, test


def write_jsonl_gz(path: Path, lines: list[bytes]) -> None:
    # mtime=0 and an empty filename keep the gzip header constant, so reruns are byte-identical.
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
        for line in lines:
            f.write(line + b"\n")


def train_tokenizer(texts: list[str], out_dir: Path, vocab_size: int = VOCAB_SIZE) -> None:
    """Byte-level BPE (GPT-2 style) trained on `texts`, saved as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    # Byte-level pre-tokenizer + full 256-byte initial alphabet: every string is representable, so any text
    # round-trips and <unk> is never produced.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)  # adds no special tokens
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        # Without this, decode() would rewrite " ." as "." etc. and break exact round trips.
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
        **SPECIAL_TOKENS,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_tok.save_pretrained(str(out_dir))


def build_assets(source: Path, out_dir: Path, n_train: int = N_TRAIN, n_test: int = N_TEST) -> None:
    """Write hh_rlhf/{train,test}.jsonl.gz, README.md, LICENSE and tokenizer/ under `out_dir`."""
    lines = read_source_lines(source)
    train, test = select_rows(lines, n_train, n_test)

    hh_dir = out_dir / "hh_rlhf"
    hh_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl_gz(hh_dir / "train.jsonl.gz", train)
    write_jsonl_gz(hh_dir / "test.jsonl.gz", test)
    (hh_dir / "README.md").write_text(render_readme(lines, n_train, n_test), encoding="utf-8")
    licence = source.parent / "LICENSE"
    if licence.is_file():
        shutil.copyfile(licence, hh_dir / "LICENSE")
    elif not (hh_dir / "LICENSE").is_file():
        raise FileNotFoundError(f"no LICENSE next to {source}; the MIT licence must ship with the data")

    # Tokenizer sees train text only, so the test slice stays held out.
    texts = []
    for line in train:
        row = json.loads(line)
        texts += [row["chosen"], row["rejected"]]
    train_tokenizer(texts, out_dir / "tokenizer")


def _read_for_compare(path: Path) -> bytes:
    # Compare gzip payloads, not gzip bytes: a different zlib build may compress differently.
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


def check_assets(source: Path, shipped_dir: Path = ASSETS_DIR) -> list[str]:
    """Rebuild into a temp dir and list the shipped files that differ (empty list = reproducible)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        build_assets(source, tmp_dir)
        problems = []
        for new in sorted(p for p in tmp_dir.rglob("*") if p.is_file()):
            rel = new.relative_to(tmp_dir)
            old = shipped_dir / rel
            if not old.is_file():
                problems.append(f"missing: {rel}")
            elif _read_for_compare(old) != _read_for_compare(new):
                problems.append(f"differs: {rel}")
        return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="HH-RLHF harmless-base test .jsonl.gz")
    parser.add_argument("--out-dir", type=Path, default=ASSETS_DIR, help="default: the package assets dir")
    parser.add_argument("--check", action="store_true", help="verify the files in --out-dir, write nothing")
    args = parser.parse_args(argv)

    if args.check:
        problems = check_assets(args.source, args.out_dir)
        for p in problems:
            print(p, file=sys.stderr)
        print("assets reproducible" if not problems else f"{len(problems)} asset file(s) out of date")
        return 1 if problems else 0

    build_assets(args.source, args.out_dir)
    for p in sorted(q for q in args.out_dir.rglob("*") if q.is_file() and q.parent != args.out_dir):
        print(f"{p.relative_to(args.out_dir)}\t{p.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
