"""The world's word-level tokenizer (``tokenizers`` WordLevel, wrapped as PreTrainedTokenizerFast).

One id per word: the world's prompts are a closed language, so a word vocabulary keeps its
sequences short (the transformer's cost grows with them) and every id means one thing.  It
covers OmniGen's template (``<|user|>`` ... ``<|diffusion|>``, the words of
"Generate an image according to the following instructions"), ``<img>``, ``</img>``,
``<cfg>``, every word the world's instructions use, and spare words for new concepts
(:data:`~deft_omni.world.spec.CONCEPT_WORDS`: the demo teaches ``sks``).

Ids: ``<pad>`` 0 (the transformer's ``pad_token_id``), ``<s>`` 1 (BOS, prepended on every
encode, as Phi-3's tokenizer does; the processor drops it from chunks after the first),
``</s>`` 2, ``<unk>`` 3.  Text is lower-cased and split at whitespace and punctuation, so
decoding joins words with single spaces.  Padding side left, as OmniGen's processor pads.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from .spec import BACKGROUNDS, CELL_WORDS, COLOURS, CONCEPT_SHAPE, CONCEPT_WORDS, SHAPES, SIZES

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>",
                                   "<|diffusion|>", "<img>", "</img>", "<cfg>")
TEMPLATE_WORDS: tuple[str, ...] = ("generate", "an", "image", "according", "to", "the", "following",
                                   "instructions")
# Words of the task instructions, plus a few a user may reach for (counts, plurals, punctuation).
FUNCTION_WORDS: tuple[str, ...] = ("a", "at", "on", "and", "background", "object", "in", "make", "move",
                                   "put", "same", "as", "but", "one", "two", "three", "of", "with",
                                   "objects", "shape", "shapes", "colour", "color", "size", "small",
                                   "large", "middle", ",", ".")
WORLD_VOCAB_SIZE = 128  # the world transformer's embedding rows: room for more spare words


def world_words() -> list[str]:
    """Every non-special word, in id order (deterministic)."""
    words: list[str] = []
    groups = (TEMPLATE_WORDS, FUNCTION_WORDS, SHAPES, (CONCEPT_SHAPE,), tuple(COLOURS), tuple(BACKGROUNDS),
              SIZES, tuple(w for cell in CELL_WORDS for w in cell.split()), CONCEPT_WORDS)
    for group in groups:
        for word in group:
            if word not in words:
                words.append(word)
    return words


def build_world_tokenizer() -> PreTrainedTokenizerFast:
    """The word-level world tokenizer (deterministic, offline)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in world_words():
        vocab[word] = len(vocab)
    if len(vocab) > WORLD_VOCAB_SIZE:
        raise RuntimeError(f"world tokenizer: {len(vocab)} tokens exceed WORLD_VOCAB_SIZE={WORLD_VOCAB_SIZE}")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", padding_side="left", model_max_length=1024)
