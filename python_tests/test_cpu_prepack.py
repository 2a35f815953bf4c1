"""prepack_for_cpu: the packed bfloat16 model gives the unpacked model's logits, both decoders stay identical on
it, it follows in-place weight changes, survives copies and pickles and runs under torch.compile, and misuse
(float32, GPU, training, a later dtype change) is a clear error."""

import copy

import pytest
import torch

from atspeed_ext import BeamSearchDecoder, ItemTrie, SpecBeamDecoder, prepack_for_cpu
from atspeed_ext.cpu_prepack import PackedLinear, _packing_available
from conftest import random_identifiers, random_prompts, requires_cuda, tiny_model

pytestmark = pytest.mark.skipif(not _packing_available(), reason="torch built without oneDNN")
VOCAB = 64


def bf16_model(family, seed, layers=2):
    model = tiny_model(family, VOCAB, seed=seed, dtype=torch.bfloat16, layers=layers).eval()
    with torch.no_grad():  # Qwen2's q/k/v biases start at zero: non-zero ones, so that a packed layer must use them
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed))
    return model


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_packed_model_gives_the_same_logits(family):
    model = bf16_model(family, seed=1)
    packed = copy.deepcopy(model)
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert prepack_for_cpu(packed) == linears > 0
    assert not any(type(m) is torch.nn.Linear for m in packed.modules())
    assert sum(isinstance(m, PackedLinear) for m in packed.modules()) == linears
    assert packed.state_dict().keys() == model.state_dict().keys()  # the parameters are kept as they were
    ids = torch.randint(3, VOCAB, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want, got = model(input_ids=ids).logits.float(), packed(input_ids=ids).logits.float()
    # The same oneDNN arithmetic up to its blocking: within bfloat16 rounding (8 bits of mantissa) of the scale.
    torch.testing.assert_close(got, want, atol=2e-2 * float(want.abs().max()), rtol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # Inductor's own
def test_packed_model_runs_under_torch_compile():
    """Inductor cannot lower oneDNN's packed weight held as a module attribute ("weight must be a graph
    constant"): under torch.compile a packed layer is a plain linear, which Inductor packs itself."""
    model = bf16_model("qwen2", seed=3, layers=1)  # (Qwen2: biased q/k/v layers too)
    packed = copy.deepcopy(model)
    prepack_for_cpu(packed)
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    try:
        with torch.inference_mode():
            want = model(input_ids=ids).logits.float()
            got = torch.compile(packed)(input_ids=ids).logits.float()
    finally:
        torch._dynamo.reset()
    # Inductor fuses the norms and rotary embeddings: bfloat16 rounding of the scale, as above.
    torch.testing.assert_close(got, want, atol=2e-2 * float(want.abs().max()), rtol=0)


def test_both_decoders_give_the_unpacked_results():
    """Where this CPU's unpacked bfloat16 linear is the same oneDNN arithmetic (bitwise equal logits, as on
    AVX512-BF16 / AMX Xeons), both decoders return exactly the unpacked model's results."""
    target, draft = bf16_model("llama", seed=2), bf16_model("llama", seed=52, layers=1)
    p_target, p_draft = copy.deepcopy(target), copy.deepcopy(draft)
    prepack_for_cpu(p_target)
    prepack_for_cpu(p_draft)
    ids = torch.randint(3, VOCAB, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        if not torch.equal(target(input_ids=ids).logits, p_target(input_ids=ids).logits):
            pytest.skip("this CPU's unpacked bfloat16 linear is not oneDNN's arithmetic")
    trie = ItemTrie(random_identifiers(150, 4, 5, seed=2), eos_token_id=2)
    prompts = random_prompts([7, 3, 12], VOCAB, seed=2)
    for make in (lambda t, d: BeamSearchDecoder(t, trie, 5), lambda t, d: SpecBeamDecoder(t, d, trie, 5, 10, 2)):
        want, got = make(target, draft).generate(prompts), make(p_target, p_draft).generate(prompts)
        assert torch.equal(got.sequences, want.sequences) and torch.equal(got.scores, want.scores)
        assert got.valid.all()


def test_misuse_raises_clear_errors():
    with pytest.raises(ValueError, match="bfloat16 linear layers only"):
        prepack_for_cpu(tiny_model("llama", VOCAB, seed=3, dtype=torch.float32))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        prepack_for_cpu("model")
    with pytest.raises(ValueError, match="needs a CPU model, but parameter .* is on meta"):  # runs on any machine
        prepack_for_cpu(bf16_model("llama", seed=4).to("meta"))
    packed = bf16_model("qwen2", seed=3)
    prepack_for_cpu(packed)
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(RuntimeError, match="inference only"):
        packed(input_ids=ids)  # gradients enabled, weights that require them
    assert prepack_for_cpu(packed) == 0  # packing again packs nothing
    packed.requires_grad_(False)
    embeds = packed.get_input_embeddings()(ids).detach().requires_grad_()  # a soft prompt on a frozen model
    with pytest.raises(RuntimeError, match="inference only"):
        packed(inputs_embeds=embeds)  # no gradient would have reached it
    packed.float()
    with pytest.raises(RuntimeError, match="packed for bfloat16 .* weight is now torch.float32"):
        with torch.no_grad():
            packed(input_ids=ids)


def test_packed_layers_follow_their_weights_copies_and_pickles(tmp_path):
    model, other = bf16_model("qwen2", seed=5), bf16_model("qwen2", seed=6)
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(5))

    def logits(m):
        with torch.inference_mode():
            return m(input_ids=ids).logits.float()

    want_model, want_other = logits(model), logits(other)
    prepack_for_cpu(model)
    got = logits(model)
    torch.testing.assert_close(got, want_model, atol=2e-2 * float(want_model.abs().max()), rtol=0)
    model.load_state_dict(other.state_dict())  # in place: the next call packs the new weights
    torch.testing.assert_close(logits(model), want_other, atol=2e-2 * float(want_other.abs().max()), rtol=0)
    clone = copy.deepcopy(model)
    assert torch.equal(logits(clone), logits(model))
    torch.save(model, tmp_path / "packed.pt")
    loaded = torch.load(tmp_path / "packed.pt", weights_only=False)
    assert torch.equal(logits(loaded), logits(model))


@requires_cuda
def test_gpu_model_is_refused():
    with pytest.raises(ValueError, match="needs a CPU model"):
        prepack_for_cpu(bf16_model("llama", seed=4).cuda())
