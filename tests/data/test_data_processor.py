"""OmniGenTrainProcessor on hand-built cases: tokens, spans, images, dropout, collate, mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ._data_helpers import solid
from PIL import Image

from deft_omni.data import (
    CFG_INSTRUCTION,
    OmniGenTrainProcessor,
    Sample,
    SampleError,
    fit_image,
    prompt_for,
)
from deft_omni.data.processor import PROMPT_PREFIX, PROMPT_SUFFIX


def sample(instruction, inputs=(), out=(32, 32), key="k", **kw):
    return Sample(key=key, instruction=instruction, task="t", output=solid(out), inputs=list(inputs), **kw)


def ids(tokenizer, text):
    return tokenizer(text)["input_ids"]


def test_template_is_notes_template():
    assert prompt_for("X") == ("<|user|>\nGenerate an image according to the following instructions\nX"
                               "<|end|>\n<|assistant|>\n<|diffusion|>")


def test_text_only_tokens(processor, tokenizer):
    item = processor(sample("a red circle on a blue background"))
    assert item.input_ids == ids(tokenizer, prompt_for("a red circle on a blue background"))
    assert item.input_ids[0] == tokenizer.bos_token_id and item.input_ids.count(1) == 1
    assert item.image_spans == [] and item.input_images == []


def test_image_spans_placeholders_and_bos_dropping(processor, tokenizer):
    # input 1: 32 x 48 (H x W) -> 2 x 3 = 6 tokens; input 2: 16 x 16 -> 1 token.
    text = "<img><|image_1|></img> then <img><|image_2|></img> in green"
    item = processor(sample(text, [solid((32, 48)), solid((16, 16))]))
    c0 = ids(tokenizer, PROMPT_PREFIX + "<img>")
    c1 = ids(tokenizer, "</img> then <img>")[1:]
    c2 = ids(tokenizer, "</img> in green" + PROMPT_SUFFIX)[1:]
    ph = processor.placeholder_id
    assert ph == tokenizer.unk_token_id == 0  # no pad token: falls back to unk
    assert item.input_ids == c0 + [ph] * 6 + c1 + [ph] + c2
    assert item.image_spans == [(len(c0), len(c0) + 6), (len(c0) + 6 + len(c1), len(c0) + 7 + len(c1))]
    assert item.input_ids.count(tokenizer.bos_token_id) == 1  # BOS only at the very start
    assert [tuple(t.shape) for t in item.input_images] == [(3, 32, 48), (3, 16, 16)]
    # <img>/</img> stay as text around each span.
    before = tokenizer.decode(item.input_ids[: item.image_spans[0][0]])
    assert before.endswith("<img>")


def test_configurable_placeholder(tokenizer):
    proc = OmniGenTrainProcessor(tokenizer, cfg_dropout=0.0, placeholder_id=7, pad_id=5)
    item = proc(sample("<img><|image_1|></img>", [solid((16, 32))]))
    s, e = item.image_spans[0]
    assert item.input_ids[s:e] == [7, 7]
    assert proc.collate([item, proc(sample("a much longer instruction than the other one"))])[
        "input_ids"][1, 0] == 5


@pytest.mark.parametrize("text, n, message", [
    ("<img><|image_1|></img> and <img><|image_2|></img>", 1, "2 image tag"),
    ("no tags at all", 1, "0 image tag"),
    ("<img><|image_2|></img>", 1, "not numbered 1..n"),
    ("<|image_1|> <|image_1|>", 1, "not numbered 1..n"),
])
def test_tag_mismatch_names_the_sample(processor, text, n, message):
    with pytest.raises(SampleError, match=message) as info:
        processor(sample(text, [solid((16, 16))] * n, key="sample_42", url="/x/shard-000001.tar"))
    assert "sample_42" in str(info.value) and "shard-000001.tar" in str(info.value)


def test_images_resize_crop_and_range(processor):
    img = Image.new("RGB", (100, 40), (255, 0, 0))  # W x H = 100 x 40
    fitted = fit_image(img, max_side=64)  # scale 0.64 -> 64 x 26 -> crop 64 x 16
    assert fitted.size == (64, 16)
    assert fit_image(Image.new("RGB", (50, 37)), max_side=64).size == (48, 32)  # no upscaling, crop only
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    assert fit_image(rgba, 64).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    proc = processor  # max_image_side 64
    t = proc.prepare_image(img)
    assert t.shape == (3, 16, 64) and t.dtype == torch.float32
    assert torch.all(t[0] == 1.0) and torch.all(t[1:] == -1.0)
    with pytest.raises(SampleError, match="below 16"):
        proc.prepare_image(Image.new("RGB", (100, 10)), key="tiny")


def test_bucket_sizes_pick_closest_aspect(tokenizer):
    proc = OmniGenTrainProcessor(tokenizer, cfg_dropout=0.0, bucket_sizes=[(32, 32), (32, 64)])
    wide = Sample(key="w", instruction="x", task="t", output=Image.new("RGB", (90, 40)))
    assert proc(wide).output_size == (32, 64)
    assert proc(sample("x", out=(50, 45))).output_size == (32, 32)
    assert proc(wide, bucket_sizes=[(48, 48)]).output_size == (48, 48)  # loader override
    with pytest.raises(ValueError, match="multiples of 16"):
        OmniGenTrainProcessor(tokenizer, bucket_sizes=[(30, 32)])


def test_cfg_dropout_deterministic(tokenizer):
    proc = OmniGenTrainProcessor(tokenizer, cfg_dropout=0.5, seed=3)
    s = [sample("<img><|image_1|></img> green", [solid((16, 16))], key=f"k{i}") for i in range(24)]
    draw = lambda seed: [proc(x, rng=np.random.default_rng(seed)).cfg_dropped for x in s]  # noqa: E731
    assert draw(0) == draw(0)
    by_key = [proc(x).cfg_dropped for x in s]  # seeded per (seed, epoch, key)
    assert by_key == [proc(x).cfg_dropped for x in s] and 0 < sum(by_key) < 24
    assert by_key != [proc(x, epoch=1).cfg_dropped for x in s]
    dropped = next(proc(x) for x in s if proc(x).cfg_dropped)
    assert dropped.input_ids == tokenizer(prompt_for(CFG_INSTRUCTION))["input_ids"]
    assert dropped.image_spans == [] and dropped.input_images == []
    always = OmniGenTrainProcessor(tokenizer, cfg_dropout=1.0)
    assert all(always(x).cfg_dropped for x in s[:4])
    assert not any(always(x, train=False).cfg_dropped for x in s[:4])


def test_prior_weight(tokenizer):
    proc = OmniGenTrainProcessor(tokenizer, cfg_dropout=0.0, prior_loss_weight=0.25)
    a, b = proc(sample("x", is_prior=True)), proc(sample("y"))
    c = proc(sample("z"), is_prior=True)  # forced by the loader's shard source
    batch = proc.collate([a, b, c])
    order = batch["order"].tolist()
    assert batch["loss_weight"].tolist() == [[0.25, 1.0, 0.25][i] for i in order]
    assert batch["is_prior"].tolist() == [[True, False, True][i] for i in order]


def test_collate_layout_and_mask(processor, tokenizer):
    short = processor(sample("<img><|image_1|></img> x", [solid((16, 32))], key="short"))
    long_ = processor(sample("<img><|image_1|></img> a red circle on a blue background", [solid((32, 16))],
                             key="long"))
    text_only = processor(sample("a green square on a white background in the evening", key="t"))
    batch = processor.collate([short, long_, text_only])
    lengths = [len(short.input_ids), len(long_.input_ids), len(text_only.input_ids)]
    order = sorted(range(3), key=lambda i: -lengths[i])
    assert batch["order"].tolist() == order and batch["keys"] == [["short", "long", "t"][i] for i in order]
    L, N = max(lengths), 4  # 32 x 32 output -> 2 x 2 tokens
    S = L + 1 + N
    assert batch["input_ids"].shape == (3, L) and batch["attention_mask"].shape == (3, S, S)
    assert batch["position_ids"].shape == (3, S) and batch["output_images"].shape == (3, 3, 32, 32)
    assert batch["padding"].tolist()[0] == 0
    b = batch["keys"].index("short")
    pad = L - len(short.input_ids)
    assert batch["padding"][b] == pad > 0
    assert batch["input_ids"][b, :pad].eq(processor.pad_id).all()
    assert batch["input_ids"][b, pad:].tolist() == short.input_ids
    assert batch["position_ids"][b].tolist() == [0] * pad + list(range(S - pad))

    # Input-image offsets count from the start of the sequence (= of input_ids), after padding.
    (s0, e0), = short.image_spans
    assert batch["input_image_sizes"][b] == [[pad + s0, pad + e0]]
    assert list(batch["input_image_sizes"]) == sorted(batch["input_image_sizes"])
    assert "t" not in [batch["keys"][k] for k in batch["input_image_sizes"]]
    flat = [tuple(x.shape) for x in batch["input_images"]]
    expect = [(1, 3) + tuple(it.input_images[0].shape[1:]) for it in (batch_item(batch, short, long_))]
    assert flat == expect

    m = batch["attention_mask"][b]
    assert m.dtype == torch.float32 and set(m.unique().tolist()) <= {0.0, 1.0}
    assert (m.sum(-1) > 0).all()  # no all-zero row anywhere (NaN in SDPA)
    for r in range(pad):  # pad rows see only themselves
        assert m[r].nonzero().flatten().tolist() == [r]
    assert m[pad:, :pad].eq(0).all()  # no real row sees a pad column
    s, e = pad + s0, pad + e0
    r = s - 1  # the text row just before the image: causal, blind to the image and beyond
    assert m[r, pad:r + 1].eq(1).all() and m[r, r + 1:].eq(0).all()
    assert m[s:e, s:e].eq(1).all()  # the image span is a bidirectional block
    assert m[s, s + 1:e].eq(1).all() and m[s, e:].eq(0).all()
    r = e + 2  # a text row after the image sees it
    assert m[r, pad:r + 1].eq(1).all() and m[r, r + 1:].eq(0).all()
    t = L  # time-token row: all non-pad text and itself, no output-image column
    assert m[t, pad:L + 1].eq(1).all() and m[t, L + 1:].eq(0).all()
    assert m[L + 1:, pad:].eq(1).all()  # output rows see every non-pad column
    # Without images the text + time block is exactly lower-triangular.
    bt = batch["keys"].index("t")
    pt = int(batch["padding"][bt])
    block = batch["attention_mask"][bt, pt:L + 1, pt:L + 1]
    assert torch.equal(block, torch.ones_like(block).tril())


def batch_item(batch, *items):
    """The items with images, in batch order."""
    return sorted(items, key=lambda it: batch["keys"].index(it.key))


def test_collate_refuses_mixed_sizes(processor):
    a, b = processor(sample("x", out=(32, 32))), processor(sample("y", out=(16, 32)))
    with pytest.raises(ValueError, match="one output size"):
        processor.collate([a, b])
