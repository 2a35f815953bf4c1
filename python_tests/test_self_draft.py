"""benchmarks/make_self_draft.py: a draft made of a target's first layers loads as a checkpoint and computes
exactly what those layers compute."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from atspeed_ext.models import load_checkpoint, save_checkpoint
from atspeed_ext.synthetic import synthetic_recdata
from atspeed_ext.tokenizer import CodeTokenizer

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "make_self_draft.py"


def make_self_draft():
    spec = importlib.util.spec_from_file_location("make_self_draft", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_self_draft_is_the_targets_first_layers(tmp_path, family):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = CodeTokenizer(synthetic_recdata(num_users=20, num_items=40).identifiers)
    common = dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    if family == "llama":
        config_type, model_type = LlamaConfig, LlamaForCausalLM
        config = LlamaConfig(**common, tie_word_embeddings=False)
    else:  # tied head; sliding-window layers from the third on (per-layer kinds in the config)
        config_type, model_type = Qwen2Config, Qwen2ForCausalLM
        config = Qwen2Config(**common, tie_word_embeddings=True, use_sliding_window=True, sliding_window=16,
                             max_window_layers=2)
    target = model_type(config).eval()
    save_checkpoint(tmp_path / "target", target, tok, {"step": 5, "max_history": 7, "with_eos": False})

    assert make_self_draft()(["--target", str(tmp_path / "target"), "--layers", "2", "--out",
                              str(tmp_path / "draft")]) == 0
    draft, draft_tok = load_checkpoint(tmp_path / "draft")
    assert draft.config.num_hidden_layers == 2 and len(draft.model.layers) == 2
    assert draft_tok.identifiers == tok.identifiers
    meta = json.loads((tmp_path / "draft" / "meta.json").read_text())
    assert meta["max_history"] == 7 and meta["layers"] == 2 and meta["step"] == 0
    # An independent construction: a 2-layer model of the same config given the target's weights of those layers.
    small = config_type(**{**config.to_dict(), "num_hidden_layers": 2,
                           "layer_types": getattr(config, "layer_types", None) and config.layer_types[:2]})
    expected = model_type(small).eval()
    kept = {k: v for k, v in target.state_dict().items() if ".layers.2." not in k}
    expected.load_state_dict(kept)
    ids = torch.tensor([tok.encode_prompt([1, 2, 3, 4, 5])])
    with torch.no_grad():
        assert torch.equal(draft(ids).logits, expected(ids).logits)


def test_self_draft_refuses_bad_requests(tmp_path, capsys):
    tok = CodeTokenizer(synthetic_recdata(num_users=20, num_items=20).identifiers)
    from atspeed_ext.models import build_model

    save_checkpoint(tmp_path / "target", build_model("target-2x128", tok.vocab_size), tok, {"step": 1})
    main = make_self_draft()
    for layers, message in (("2", "keep 1 to 1 of the model's 2 layers, not 2"),):
        with pytest.raises(SystemExit):
            main(["--target", str(tmp_path / "target"), "--layers", layers, "--out", str(tmp_path / "d")])
        assert message in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    with pytest.raises(SystemExit):
        main(["--target", str(tmp_path / "target"), "--layers", "1", "--out", str(tmp_path / "taken")])
    assert "exists; give a new folder" in capsys.readouterr().err
