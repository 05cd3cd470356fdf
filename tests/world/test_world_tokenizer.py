"""The world tokenizer: fixed special ids, one id per word, a lossless round trip of every world
instruction, and OmniGen's processor on top of it."""

from __future__ import annotations

from transformers import AutoTokenizer

from deft_omni.data import OmniGenTrainProcessor
from deft_omni.world.spec import CONCEPT_WORDS
from deft_omni.world.tasks import TASKS, held_out_prompts
from deft_omni.world.tokenizer import WORLD_VOCAB_SIZE, build_world_tokenizer


def test_ids_and_round_trip(tmp_path):
    tok = build_world_tokenizer()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert len(tok) <= WORLD_VOCAB_SIZE
    for task in TASKS:
        for spec in held_out_prompts(20, task, "seen", seed=0) + held_out_prompts(5, task, "unseen", seed=0):
            text = spec.instruction.replace("<|image_1|>", " ")
            ids = tok(text)["input_ids"]
            assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids, text
            words = text.replace("<img>", " <img> ").replace("</img>", " </img> ").split()
            assert len(ids) == 1 + len(words)  # one id per word
            assert tok.decode(ids[1:]).split() == words
    for word in CONCEPT_WORDS:
        assert tok.unk_token_id not in tok(f"a large red {word} at the top")["input_ids"]
    tok.save_pretrained(tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    text = held_out_prompts(1, "text_two", seed=9)[0].instruction
    assert again(text)["input_ids"] == tok(text)["input_ids"]


def test_processor_template_and_image_spans():
    tok = build_world_tokenizer()
    proc = OmniGenTrainProcessor(tok, cfg_dropout=0.0)
    ids, spans = proc.tokenize("move the object in <img><|image_1|></img> to the top left", [(96, 96)])
    assert spans == [(15, 15 + 36)] and ids.count(tok.bos_token_id) == 1
    words = tok.convert_ids_to_tokens(ids[:15] + ids[51:])
    assert words == ["<s>", "<|user|>", "generate", "an", "image", "according", "to", "the", "following",
                     "instructions", "move", "the", "object", "in", "<img>", "</img>", "to", "the", "top", "left",
                     "<|end|>", "<|assistant|>", "<|diffusion|>"]
    assert proc.tokenize("<cfg>", [])[0] == tok.convert_tokens_to_ids(
        ["<s>", "<|user|>", "generate", "an", "image", "according", "to", "the", "following", "instructions",
         "<cfg>", "<|end|>", "<|assistant|>", "<|diffusion|>"])
