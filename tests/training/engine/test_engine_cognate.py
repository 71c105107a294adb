"""Cognate byte-level LM trains on the built-in word problems and on a local JSONL file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.training.engine import (BUILTIN_DATASET, EvalEvent, GrokfastSpec, ModelSpec,
                                      OptimizerSpec, ProgressEvent, SpecError, TaskSpec, Trainer,
                                      TrainingSpec)
from services.training.engine.tasks import ByteTokenizer, CognateTask, generate_word_problems


def _spec(dataset: str, steps: int) -> TrainingSpec:
    return TrainingSpec(
        task=TaskSpec(kind="cognate", dataset=dataset, train_fraction=0.9),
        model=ModelSpec(layers=1, width=32, heads=2, context_length=32),
        optimizer=OptimizerSpec(kind="adamw", lr=3e-3, weight_decay=0.01, warmup_steps=10),
        grokfast=GrokfastSpec(kind="none"),
        batch_size=16, max_steps=steps, eval_interval=steps // 2, checkpoint_interval=steps,
        progress_interval=10, seed=0, device="cpu",
    )


def test_word_problems_are_deterministic_and_correct() -> None:
    a, b = generate_word_problems(50, seed=3), generate_word_problems(50, seed=3)
    assert a == b and a != generate_word_problems(50, seed=4)
    for text in a:
        if " buys " in text:
            words = text.split()
            x, y = int(words[2]), int(words[words.index("buys") + 1])
            assert text.endswith(f"? {x + y}")
    tok = ByteTokenizer()
    assert tok.decode(tok.encode(a[0])) == a[0]


def test_cognate_on_builtin_problems_loss_goes_down(tmp_path: Path) -> None:
    progress: list[ProgressEvent] = []
    evals: list[EvalEvent] = []
    def on_event(event: object) -> None:
        if isinstance(event, ProgressEvent):
            progress.append(event)
        elif isinstance(event, EvalEvent):
            evals.append(event)

    out = Trainer(_spec(BUILTIN_DATASET, 100), tmp_path, on_event=on_event).run()
    assert out.status == "succeeded"
    assert progress[-1].train_loss < progress[0].train_loss - 1.0
    assert evals[-1].validation_loss < evals[0].validation_loss
    assert evals[-1].validation_perplexity < 259


def test_cognate_on_a_jsonl_file(tmp_path: Path) -> None:
    data = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"text": t}) for t in generate_word_problems(300, seed=9)]
    data.write_text("\n".join(lines) + "\n")
    losses: list[float] = []
    out = Trainer(_spec(str(data), 40), tmp_path / "run",
                  on_event=lambda e: losses.append(e.train_loss) if isinstance(e, ProgressEvent) else None).run()
    assert out.status == "succeeded" and losses[-1] < losses[0]


def test_bad_dataset_files_raise_spec_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "no text field"}\n')
    with pytest.raises(SpecError) as info:
        CognateTask(str(bad), context_length=8)
    assert info.value.field_path == "task.dataset"
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("ab\ncd\n")
    with pytest.raises(SpecError, match="context_length"):
        CognateTask(str(tiny), context_length=64)


# --- TOKENIZER_CHAR ----------------------------------------------------------------------


def test_char_tokenizer_is_the_text_s_characters_plus_bos_eos_pad() -> None:
    from services.training.engine.tasks import CharTokenizer

    tok = CharTokenizer.from_documents(["baa c", "é!"])
    assert tok.vocabulary == " !abcé" and tok.vocab_size == len(" !abcé") + 3
    assert (tok.BOS, tok.EOS, tok.PAD) == (6, 7, 8)
    ids = tok.encode("cab é")
    assert ids == [6, 4, 2, 3, 0, 5, 7] and tok.decode(ids) == "cab é"
    with pytest.raises(SpecError, match="'z'"):
        tok.encode("zebra")
    assert tok.decode(tok.encode("zebra", skip_unknown=True)) == "ba"
    with pytest.raises(SpecError) as info:
        CharTokenizer("".join(chr(0x4E00 + i) for i in range(CharTokenizer.MAX_CHARACTERS + 1)))
    assert info.value.field_path == "task.tokenizer"


def test_char_tokenizer_applies_to_cognate_only() -> None:
    with pytest.raises(SpecError) as info:
        TrainingSpec(task=TaskSpec(kind="modular_arithmetic", tokenizer="char")).validate()
    assert info.value.field_path == "task.tokenizer"
    with pytest.raises(SpecError):
        TrainingSpec(task=TaskSpec(kind="cognate", tokenizer="words")).validate()  # type: ignore[arg-type]


def test_cognate_with_the_char_tokenizer_trains_and_its_checkpoint_records_the_vocabulary(tmp_path: Path) -> None:
    import torch

    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(generate_word_problems(300, seed=5)) + "\n")
    spec = _spec(str(data), 60)
    spec = spec.replace(task=TaskSpec(kind="cognate", dataset=str(data), train_fraction=0.9, tokenizer="char"))
    losses: list[float] = []
    out = Trainer(spec.validate(), tmp_path / "run",
                  on_event=lambda e: losses.append(e.train_loss) if isinstance(e, ProgressEvent) else None).run()
    assert out.status == "succeeded" and losses[-1] < losses[0] - 0.5
    chars = sorted(set(data.read_text()) - {"\n"})
    ckpt = torch.load(out.checkpoint_path, weights_only=True)  # type: ignore[arg-type]
    assert ckpt["tokenizer"] == {"kind": "char", "vocabulary": "".join(chars)}
    # The model's vocabulary is the text's characters plus BOS, EOS and PAD, not 259 bytes.
    assert ckpt["model"]["token_embeddings.weight"].shape[0] == len(chars) + 3
    byte = torch.load(Trainer(_spec(str(data), 2), tmp_path / "byte").run().checkpoint_path,  # type: ignore[arg-type]
                      weights_only=True)
    assert byte["tokenizer"] == {"kind": "byte"} and byte["model"]["token_embeddings.weight"].shape[0] == 259
