"""How the forge phases feed registered models text: the model's own tokenizer."""

from __future__ import annotations

import pytest
import torch

from agentforge.model.v1 import model_version_pb2 as mv
from services.forge.modelio import architecture, build_decoder, heldout_task, tokenizer_of, validation_loss
from services.forge.phases.base import StepFailedError
from services.training.engine.model import DecoderTransformer
from services.training.engine.tasks import ByteTokenizer, CharTokenizer

PARAMS = {"model.layers": "1", "model.width": "16", "model.heads": "2", "model.context_length": "16",
          "task.kind": "cognate"}


def test_a_byte_model_is_scored_on_bytes_and_a_char_model_on_its_own_vocabulary() -> None:
    assert tokenizer_of(PARAMS) == "byte" and tokenizer_of({**PARAMS, "task.tokenizer": "byte"}) == "byte"
    # The word problems' characters, less 'z' and 'Z' (a model that never saw them).
    vocabulary = "".join(sorted(set(" .0123456789?ABCDEFGHIJKLMNOPQRSTabcdefghiklmnopqrstuvwy")))
    params = {**PARAMS, "task.tokenizer": "char", "task.tokenizer.vocabulary": vocabulary}
    tokenizer = tokenizer_of(params)
    assert isinstance(tokenizer, CharTokenizer) and tokenizer.vocabulary == vocabulary
    task = heldout_task(16, tokenizer=tokenizer)
    assert task.vocab_size == len(vocabulary) + 3
    assert int(task.eval_inputs.max()) < task.vocab_size  # every id means something to the model
    torch.manual_seed(0)
    state = DecoderTransformer(vocab_size=task.vocab_size, width=16, layers=1, heads=2, context_length=16).state_dict()
    loss = validation_loss(build_decoder(state, params), task)
    assert 0 < loss < 10
    bytes_task = heldout_task(16)
    assert isinstance(bytes_task.tokenizer, ByteTokenizer) and bytes_task.vocab_size == 259
    with pytest.raises(StepFailedError, match="vocabulary"):
        tokenizer_of({**PARAMS, "task.tokenizer": "char"})


def test_models_with_other_tokenizers_do_not_share_an_architecture() -> None:
    def version(**params: str) -> mv.ModelVersion:
        return mv.ModelVersion(parameters={**PARAMS, **params})

    assert architecture(version()) == architecture(version(**{"task.tokenizer": "byte"}))
    assert architecture(version()) != architecture(version(**{"task.tokenizer": "char",
                                                              "task.tokenizer.vocabulary": "ab"}))
    assert architecture(version(**{"task.tokenizer": "char", "task.tokenizer.vocabulary": "ab"})) != \
        architecture(version(**{"task.tokenizer": "char", "task.tokenizer.vocabulary": "abc"}))
