"""Text-prompt LLMs: codes added to a Hugging Face tokenizer, instruction prompts, the trie in its ids, and the
whole train -> save -> load -> evaluate path with such a model (also starting from a plain HF directory)."""

import json

import pytest
import torch

from atspeed_ext.decoder import BeamSearchDecoder
from atspeed_ext.evaluate import evaluate_model
from atspeed_ext.models import load_checkpoint, save_checkpoint
from atspeed_ext.synthetic import synthetic_recdata
from atspeed_ext.text_prompt import INSTRUCTION_TEMPLATE, TextPromptTokenizer
from atspeed_ext.tokenizer import code_tokens
from atspeed_ext.train import TrainConfig, train_next_item


def byte_level_tokenizer():
    """A small byte-level BPE tokenizer (the Qwen2 / LLaMA-3 kind), trained here on the prompt's words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([INSTRUCTION_TEMPLATE] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>")


@pytest.fixture(scope="module")
def data():
    return synthetic_recdata(num_users=200, num_items=40, codes_per_level=5, seed=1)


def test_codes_are_single_added_tokens_and_prompts_carry_them(data):
    hf = byte_level_tokenizer()
    base = len(hf)
    tok = TextPromptTokenizer(hf, data.identifiers)
    codes = code_tokens(data.identifiers)
    assert tok.vocab_size == base + len(codes)
    ids = tok.item_token_ids
    assert ids.shape == (data.num_items, len(data.identifiers[0]))
    assert ids.min() >= base  # every code is a new token, none is split into byte pieces
    assert tok.decode(ids[7].tolist()) == list(data.identifiers[7])
    history = [3, 11, 5]
    prompt = tok.encode_prompt(history)
    text = hf.decode(prompt)
    assert text.startswith("Below is an instruction") and text.endswith("### Response:")
    assert "".join(data.identifiers[3]) + ", " + "".join(data.identifiers[11]) in text
    flat = [i for i in prompt if i >= base]  # the code tokens of the prompt, in order
    assert flat == [t for item in history for t in tok.encode_item(item)]
    assert TextPromptTokenizer(hf, data.identifiers).vocab_size == tok.vocab_size  # adding again reuses the codes
    for bad, message in ((lambda: tok.encode_item(-1), "item -1 is not an item id"),
                         (lambda: tok.encode_prompt([3, data.num_items]), f"item {data.num_items} is not an item id"),
                         (lambda: tok.decode([-1]), "ids\\[0\\] = -1 is not a token id")):
        with pytest.raises(ValueError, match=message):
            bad()


def test_trie_is_in_the_tokenizer_ids(data):
    tok = TextPromptTokenizer(byte_level_tokenizer(), data.identifiers)
    trie = tok.trie(with_eos=True)
    assert trie.vocab_size == tok.vocab_size and trie.eos_token_id == tok.eos_token_id
    for item in (0, 17, data.num_items - 1):
        assert trie.contains(tok.encode_item(item) + [tok.eos_token_id])
    assert set(trie.children([])) == {int(t) for t in tok.item_token_ids[:, 0]}


def metaspace_tokenizer():
    """A Llama-2-style tokenizer (its normalizer prepends '▁' and turns spaces into '▁'), trained here."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator([INSTRUCTION_TEMPLATE.replace(" ", "▁")] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_codes_survive_a_normalizing_tokenizer(data):
    """Codes are added unnormalized: with a Llama-2-style normalizer every code of the history (not only those
    after a space) is one added token, and each is stored as itself, not as '▁<a_1>'."""
    hf = metaspace_tokenizer()
    base = len(hf)
    tok = TextPromptTokenizer(hf, data.identifiers)
    assert tok.decode(tok.item_token_ids[7].tolist()) == list(data.identifiers[7])
    history = [3, 11, 5]
    flat = [i for i in tok.encode_prompt(history) if i >= base]
    assert flat == [t for item in history for t in tok.encode_item(item)]


def test_bad_template_and_missing_eos(data):
    with pytest.raises(ValueError, match="history"):
        TextPromptTokenizer(byte_level_tokenizer(), data.identifiers, template="no field")
    for template in ('Answer as JSON {"item": ...}. History: {history}', "History: {history}. In {lang}."):
        with pytest.raises(ValueError, match="no field but {history}.*literal braces"):
            TextPromptTokenizer(byte_level_tokenizer(), data.identifiers, template=template)
    assert TextPromptTokenizer(byte_level_tokenizer(), data.identifiers,  # escaped braces are fine
                               template="As JSON {{...}}: {history}").prompt_text([0]).startswith("As JSON {...}: ")
    hf = byte_level_tokenizer()
    hf.eos_token = None
    with pytest.raises(ValueError, match="no eos token"):
        TextPromptTokenizer(hf, data.identifiers)


def test_train_save_load_evaluate_a_text_prompt_llm(data, tmp_path):
    """A plain HF directory (a tiny Qwen2 with its own tokenizer) -> load with identifiers (codes added,
    embeddings grown) -> next-item training -> checkpoint -> reload -> identical beams."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hf = byte_level_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(hf), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      eos_token_id=hf.eos_token_id, pad_token_id=hf.pad_token_id)
    plain = tmp_path / "plain"
    Qwen2ForCausalLM(cfg).save_pretrained(plain)
    with pytest.raises(ValueError, match="has no tokenizer files"):  # transformers would build an empty one
        load_checkpoint(plain, identifiers=data.identifiers)
    hf.save_pretrained(plain)
    with pytest.raises(ValueError, match="plain Hugging Face model"):
        load_checkpoint(plain)
    model, tok = load_checkpoint(plain, identifiers=data.identifiers)
    assert isinstance(tok, TextPromptTokenizer)
    assert model.get_input_embeddings().num_embeddings >= tok.vocab_size > len(hf)
    torch.manual_seed(5)  # the codes' new embedding rows do not depend on the caller's RNG state
    again, _ = load_checkpoint(plain, identifiers=data.identifiers)
    assert torch.equal(again.get_input_embeddings().weight, model.get_input_embeddings().weight)

    state = train_next_item(model, tok, data, tmp_path / "run", TrainConfig(epochs=1, batch_size=32, lr=5e-3,
                                                                            eval_prompts=20), progress=False)
    assert state["step"] > 0 and state["loss"] < 7
    items = json.loads((tmp_path / "run" / "best" / "items.json").read_text())
    assert items["prompt"] == "text" and items["template"] == INSTRUCTION_TEMPLATE
    best, tok2 = load_checkpoint(tmp_path / "run" / "best")
    assert isinstance(tok2, TextPromptTokenizer) and tok2.item_token_ids.equal(tok.item_token_ids)
    prompts = data.test_prompts()[:6]
    encoded = [tok2.encode_prompt(p.history) for p in prompts]
    assert encoded == [tok.encode_prompt(p.history) for p in prompts]
    out = BeamSearchDecoder(best, tok2.trie(), num_beams=5).generate(encoded)
    assert out.valid.all()  # every beam is a catalogue item, spelled in the text tokenizer's ids
    # The reloaded model is the trained one (one epoch, validated once: best = the final weights), grown code
    # embeddings included: the same beams and scores, the same metrics.
    trained = BeamSearchDecoder(model.eval(), tok.trie(), num_beams=5).generate(encoded)
    assert torch.equal(out.sequences, trained.sequences) and torch.equal(out.scores, trained.scores)
    metrics = evaluate_model(best, tok2, prompts, ks=(5,), progress=False)
    assert metrics == evaluate_model(model, tok, prompts, ks=(5,), progress=False)
    # Such a model as the draft of an identifier-prompt target (or the other way round) is refused by train-draft.
    from atspeed_ext.commands import check_same_prompts
    from atspeed_ext.tokenizer import CodeTokenizer

    check_same_prompts(tok, tok2, data.num_items, "draft", "target")  # the same tokenizer: fine
    for draft_tok, target_tok in ((tok2, CodeTokenizer(data.identifiers)), (CodeTokenizer(data.identifiers), tok2)):
        with pytest.raises(ValueError, match="draft tokenizes prompts or items differently from target"):
            check_same_prompts(target_tok, draft_tok, data.num_items, "draft", "target")


def test_checkpoints_of_identifier_models_still_load(data, tmp_path):
    """``tokenizer.json`` holding identifiers (the layout before ``items.json``) is still understood."""
    from atspeed_ext.models import build_model
    from atspeed_ext.tokenizer import CodeTokenizer

    tok = CodeTokenizer(data.identifiers)
    save_checkpoint(tmp_path, build_model("tiny-1x64", tok.vocab_size), tok)
    (tmp_path / "items.json").rename(tmp_path / "tokenizer.json")
    _, tok2 = load_checkpoint(tmp_path)
    assert isinstance(tok2, CodeTokenizer) and tok2.identifiers == tok.identifiers
