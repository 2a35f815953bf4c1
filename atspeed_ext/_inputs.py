"""Validation and normalisation of decoder inputs (prompts, models, tries) with clear errors."""

from __future__ import annotations

import inspect
import numbers
import warnings
import weakref

import torch

from .trie import ItemTrie


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def model_vocab_sizes(model: torch.nn.Module) -> tuple[int, int]:
    """(input vocabulary size, output logits size) of a Hugging Face causal LM."""
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    n_in = emb.num_embeddings if hasattr(emb, "num_embeddings") else emb.weight.shape[0]
    n_out = head.out_features if hasattr(head, "out_features") else head.weight.shape[0]
    return int(n_in), int(n_out)


def model_pad_token_id(model: torch.nn.Module) -> int:
    """The token a model's config pads prompts with (0 when it names none)."""
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    return pad if isinstance(pad, int) else 0


def check_model_and_trie(model: torch.nn.Module, trie: ItemTrie, name: str = "model",
                         tree_attention: bool = True) -> None:
    """Refuse a trie that is not an ItemTrie, a model that is not a loaded causal LM or does not embed and score
    every trie token, and (``tree_attention``) a model whose attention the decoders cannot share across beams."""
    if not isinstance(trie, ItemTrie):
        raise TypeError(f"trie must be an atspeed_ext.ItemTrie, got {type(trie).__name__}")
    if not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
        raise TypeError(f"{name} must be a Hugging Face causal LM (…ForCausalLM), got {type(model).__name__}")
    on_meta = next((n for n, p in model.named_parameters() if p.device.type == "meta"), None)
    if on_meta is not None:
        raise ValueError(f"{name} has parameters on the 'meta' device ({on_meta}): its weights were never loaded")
    if tree_attention:
        check_tree_attention(model, name)
    n_in, n_out = model_vocab_sizes(model)
    for size, what in ((n_in, "embeds"), (n_out, "scores")):  # tree tokens are fed back, and scored
        if trie.vocab_size > size:
            raise ValueError(
                f"vocabulary mismatch: the trie is built for a vocabulary of {trie.vocab_size} tokens (its largest "
                f"token id is {int(trie.child_tokens.max())}) but {name} ({type(model).__name__}) only {what} {size}"
            )


def active_dropout(model: torch.nn.Module) -> str | None:
    """What makes a model in training mode random: a ``torch.nn.Dropout`` module or a ``*dropout*`` / ``*_pdrop``
    config probability above 0 (Hugging Face attention applies its dropout functionally, when ``training``);
    None when the model is in eval mode or has no dropout."""
    if not model.training:
        return None
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0 and module.training:
            return f"{type(module).__name__}(p={module.p}) at {module_name or 'the model'}"
    config = getattr(model, "config", None)
    for key, value in (vars(config).items() if config is not None else ()):
        if ("dropout" in key or key.endswith("_pdrop")) and isinstance(value, float) and value > 0:
            return f"config.{key} = {value}"
    return None


def warn_if_dropout_active(model: torch.nn.Module, name: str = "model") -> None:
    """Warn when a model decodes in training mode with dropout active: its beams are random then, and
    speculative decoding no longer matches target-only decoding."""
    cause = active_dropout(model)
    if cause is not None:
        warnings.warn(f"{name} is in training mode with dropout active ({cause}): its scores are random and a "
                      f"speculative decode no longer matches a target-only one; call {name}.eval() before "
                      "decoding", stacklevel=4)


def check_tree_attention(model: torch.nn.Module, name: str = "model") -> None:
    """Refuse a model whose attention the decoders cannot share between beams: they feed the K beams (or a tree)
    of a request as tokens of one cache row, told apart only by a 4-D attention mask and ``position_ids``. That is
    wrong, silently, for ALiBi (its biases come from slot distances, not positions; MPT, Bloom, Falcon with
    ``alibi``) and for recurrent or linear-attention state, which would read the beams as one sequence (Mamba,
    Jamba, LFM2, Qwen3-Next, Falcon-H1, ...); caches with extra per-token state (sparse-attention indexers) are
    not compacted. Such models are recognised by a forward without ``position_ids``, an ``alibi`` setting, or a
    cache (as transformers builds it for the config) with layers other than plain or sliding-window attention.
    Attention implementations that ignore a 4-D mask (flash attention, paged attention) are refused too."""
    module = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: the model's own signature
    kind = type(module).__name__
    if "position_ids" not in inspect.signature(module.forward).parameters:
        raise ValueError(f"{name} ({kind}) takes no position_ids (ALiBi or recurrent): the decoders' tree attention "
                         "needs rotary or learned positions")
    config = getattr(module, "config", None)
    if getattr(config, "_attn_implementation", None) == "flex_attention" and model_device(module).type == "cpu":
        raise ValueError(f"{name} ({kind}) uses attn_implementation='flex_attention', which crashes the process on "
                         "the CPU when given the 4-D attention masks of tree attention (transformers 5.24, torch "
                         "2.14); load it with attn_implementation='sdpa' or 'eager'")
    impl = str(getattr(config, "_attn_implementation", None) or "")
    if "flash" in impl or "paged" in impl:
        raise ValueError(f"{name} ({kind}) uses attn_implementation={impl!r}, which takes no 4-D attention mask (flash "
                         "kernels take padding at most; paged attention needs its own cache), and tree attention "
                         "needs one (each beam sees its prompt and its own ancestors only); load it with "
                         "attn_implementation='sdpa' or 'eager'")
    if getattr(config, "alibi", False) or getattr(getattr(config, "attn_config", None), "alibi", False):
        raise ValueError(f"{name} ({kind}) uses ALiBi, whose biases come from cache-slot distances: the decoders' tree "
                         "attention needs rotary or learned positions")
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

        layers = DynamicCache(config=config).layers
    except Exception:  # an older transformers (no layered caches, none of these models) or a config it cannot use
        return
    other = sorted({type(layer).__name__ for layer in layers} - {DynamicLayer.__name__, DynamicSlidingWindowLayer.__name__})
    if other:
        raise ValueError(f"{name} ({kind}) keeps {', '.join(other)} state in its cache: recurrent, linear-attention or "
                         "indexer state cannot be shared by the beams of one cache row; use an attention-only model")


def sliding_window(model: torch.nn.Module) -> int | None:
    """The attention window of a model that attends to its last tokens only on some layers: a sliding window
    (Mistral, Gemma 2/3, Qwen2 with ``use_sliding_window``), chunked attention (Llama 4) or GPT-Neo's local
    layers; None for full attention everywhere."""
    config = getattr(model, "config", None)
    layer_types = [str(t) for t in (getattr(config, "layer_types", None) or [])]
    windows = []
    window = getattr(config, "sliding_window", None)
    if window:
        if layer_types:
            if any("sliding" in t for t in layer_types):
                windows.append(int(window))
        elif getattr(config, "use_sliding_window", True) is not False:
            windows.append(int(window))
    chunk = getattr(config, "attention_chunk_size", None)
    if chunk and (not layer_types or "chunked_attention" in layer_types):
        windows.append(int(chunk))
    if "local" in (getattr(config, "attention_layers", None) or []) and getattr(config, "window_size", None):
        windows.append(int(config.window_size))
    return min(windows, default=None)


def check_cache_window(model: torch.nn.Module, name: str, slots: int) -> None:
    """Refuse a decode whose cache could outgrow a sliding window: the decoders' beam and tree masks address
    every cache slot, and a sliding-window cache drops the oldest ones. ``slots`` bounds the slots a call can
    attend to (the decoder's own bound, see :func:`spec_cache_slots`)."""
    window = sliding_window(model)
    if window is not None and slots >= window:
        raise ValueError(
            f"{name} ({type(model).__name__}) uses sliding-window attention with a window of {window} tokens, and "
            f"this decode may need up to {slots} cache slots (longest prompt + decoding slots): the decoders need "
            "every slot kept; use shorter prompts, smaller K / N, or a model with full attention"
        )


def _rope_settings(config) -> list[dict]:
    """The RoPE settings of a config (transformers 5's ``rope_parameters``, possibly one per layer type, or the older
    ``rope_scaling``)."""
    for attr in ("rope_parameters", "rope_scaling"):
        params = getattr(config, attr, None)
        if isinstance(params, dict):
            nested = [v for v in params.values() if isinstance(v, dict)]
            return nested or [params]
    return []


#: learned_position_limit's answer per model (walking the modules costs ~80 us, at every generate call).
_position_limits: "weakref.WeakKeyDictionary[torch.nn.Module, int | None]" = weakref.WeakKeyDictionary()


def learned_position_limit(model: torch.nn.Module) -> int | None:
    """The number of positions a model with a learned position table (GPT-2's ``wpe``, OPT's
    ``embed_positions``, GPT-Neo's, ...) can embed; None for models without one (RoPE, ALiBi)."""
    if model not in _position_limits:
        limit = None
        for module_name, module in model.named_modules():
            if (isinstance(module, torch.nn.Embedding)
                    and module_name.rsplit(".", 1)[-1] in ("wpe", "embed_positions", "position_embeddings")):
                limit = module.num_embeddings - int(getattr(module, "offset", 0))  # OPT's starts at offset 2
                break
        _position_limits[model] = limit
    return _position_limits[model]


def check_positions(model: torch.nn.Module, name: str, prompt_lengths: torch.Tensor, depth: int) -> None:
    """Refuse a decode past a learned position table (an index error inside the model otherwise), or across the
    length at which a model's RoPE changes its frequencies. Longrope (Phi-3) takes its
    short or long factors per call from the largest position in the call (switching at
    ``original_max_position_embeddings``); dynamic NTK rescales beyond ``max_position_embeddings``. The decoders'
    calls hold other positions than generate's (a tree reaches deeper ones in one call; finished requests leave
    the batch), so unless every call falls on one side, their scores would differ."""
    config = getattr(model, "config", None)
    shortest, longest = int(prompt_lengths.min()), int(prompt_lengths.max())
    last = longest + depth - 1  # the largest sequence length a call can see
    table = learned_position_limit(model)
    if table is not None and last > table:
        raise ValueError(f"{name} ({type(model).__name__}) has learned position embeddings for {table} positions, and "
                         f"this decode reaches position {last - 1} (longest prompt {longest} tokens, then "
                         f"{depth - 1} fed levels): use prompts of at most {table - depth + 1} tokens")
    settings = _rope_settings(config)
    for params in settings:
        kind = params.get("rope_type", params.get("type"))
        if kind == "longrope":
            switch = params.get("original_max_position_embeddings") or getattr(config, "original_max_position_embeddings",
                                                                               None)
            if switch and last > switch and shortest <= switch:
                raise ValueError(f"{name} ({type(model).__name__}) uses longrope RoPE, whose factors switch at "
                                 f"{switch} positions, and this batch spans {shortest} to {last}: decode prompts of at "
                                 f"most {switch - depth + 1} tokens, or of more than {switch}, in separate batches")
        elif kind == "dynamic":
            limit = params.get("original_max_position_embeddings") or getattr(config, "max_position_embeddings", None)
            if limit and last > limit:
                raise ValueError(f"{name} ({type(model).__name__}) uses dynamic NTK RoPE, which rescales beyond {limit} "
                                 f"positions, and this decode reaches {last}: use prompts of at most "
                                 f"{limit - depth + 1} tokens")


def beam_cache_slots(prompt_len: int, K: int, depth: int) -> int:
    """BeamSearchDecoder's cache: the prompt, then K slots for each level but the last (never fed)."""
    return prompt_len + K * (depth - 1)


def spec_cache_slots(prompt_len: int, K: int, N, gamma: int, depth: int, batch: int = 1) -> int:
    """A bound on SpecBeamDecoder's cache (its slots per request row, padding included).

    A round whose request starts with t levels decided holds the prompt, at most K slots per level fed before
    (after compaction: t - 1 levels), the K pending beams and the slots of its g = min(gamma, depth - t - 1)
    drafted levels (round one: no pending beams). In a batch the rows share one cache width, and requests
    can sit at different depths: the deepest row's fed levels (up to depth - 2, plus its K pending beams) then
    meet the widest row's drafted levels. ``N``: one width for every drafted level, or a sequence of widths by
    trie depth (the drafted level at depth d has ``N[d - 1]`` nodes; the last width repeats deeper down).
    """
    widths = [N] if isinstance(N, int) else list(N)
    width = lambda d: widths[min(d, len(widths)) - 1]  # noqa: E731  (d = the drafted level's trie depth)
    first = sum(width(d) for d in range(1, min(gamma, depth - 1) + 1))
    if batch == 1:
        later = max([K * t + sum(width(d) for d in range(t + 1, t + min(gamma, depth - t - 1) + 1))
                     for t in range(1, depth)], default=0)
    else:  # level j of a round sits at depth t + j for rows at depths t >= 1
        later = K * (depth - 1) + sum(max(width(d) for d in range(j + 1, depth))
                                      for j in range(1, min(gamma, depth - 2) + 1))
    return prompt_len + max(first, later)


def normalise_prompts(
    input_ids, attention_mask, device: torch.device, vocab_size: int, pad_token_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return left-padded ``(input_ids [B, T] int64, attention_mask [B, T] int64)`` on ``device``.

    Accepts a left-padded tensor (with an optional 0/1 attention mask; without one every position is a
    prompt token) or a list of 1-D token lists/tensors of different lengths.
    """
    if type(input_ids).__module__ == "numpy":  # a numpy array: as the tensor it holds
        input_ids = torch.as_tensor(input_ids, device=device)
        if type(attention_mask).__module__ == "numpy":
            attention_mask = torch.as_tensor(attention_mask, device=device)
    if isinstance(input_ids, (list, tuple)):
        if input_ids and isinstance(input_ids[0], numbers.Integral):
            raise ValueError("input_ids looks like a single prompt (a flat list of token ids): pass a list of prompts, "
                             "e.g. [[1, 5, 9]]")
        if attention_mask is not None:
            raise ValueError("attention_mask must be None when input_ids is a list of prompts")
        if len(input_ids) == 0:
            raise ValueError("input_ids is an empty list: pass at least one prompt")
        rows = []
        for i, p in enumerate(input_ids):
            if isinstance(p, torch.Tensor):
                if p.dim() != 1 or p.dtype.is_floating_point or p.dtype == torch.bool:
                    raise ValueError(f"prompt {i} must be a 1-D integer tensor, got {p.dtype} shape {tuple(p.shape)}")
                p = p.tolist()
            p = list(p)
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
            if not all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in p):
                raise ValueError(f"prompt {i} must contain integer token ids")
            rows.append([int(t) for t in p])  # numpy integers too
        # Checked and padded as Python lists: two tensors made, no device round trip (a request's fixed cost).
        for i, p in enumerate(rows):
            if min(p) < 0 or max(p) >= vocab_size:
                bad = min(p) if min(p) < 0 else max(p)
                raise ValueError(f"input_ids contains token id {bad} (prompt {i}), outside the model's vocabulary "
                                 f"[0, {vocab_size})")
        T = max(len(p) for p in rows)
        pad = pad_token_id if 0 <= pad_token_id < vocab_size else 0
        ids = torch.tensor([[pad] * (T - len(p)) + p for p in rows], dtype=torch.long, device=device)
        mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in rows], dtype=torch.long, device=device)
        return ids, mask
    elif isinstance(input_ids, torch.Tensor):
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a 2-D [batch, length] tensor, got shape {tuple(input_ids.shape)}"
                             + (" (one prompt? pass it as [1, length])" if input_ids.dim() == 1 else ""))
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be int64 (or int32), got {input_ids.dtype}")
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be non-empty, got shape {tuple(input_ids.shape)}")
        if input_ids.device != device:
            raise ValueError(f"input_ids is on {input_ids.device} but the model is on {device}")
        ids = input_ids.long()
        if attention_mask is None:
            mask = torch.ones_like(ids)
        else:
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask must be a tensor of the shape of input_ids {tuple(input_ids.shape)}, got "
                    f"{tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)}"
                )
            if attention_mask.device != device:
                raise ValueError(f"attention_mask is on {attention_mask.device} but the model is on {device}")
            if attention_mask.dtype.is_floating_point:
                raise ValueError(f"attention_mask must be an integer or bool 0/1 tensor, got {attention_mask.dtype}")
            mask = attention_mask.long()
            if bool(((mask != 0) & (mask != 1)).any()):
                raise ValueError("attention_mask must contain only 0 and 1")
            if bool((mask[:, 1:] < mask[:, :-1]).any()):
                raise ValueError("prompts must be left-padded: in every row of attention_mask the 0s come before the 1s")
            if bool((mask.sum(1) == 0).any()):
                raise ValueError("every prompt needs at least one token (a row of attention_mask is all 0)")
    else:
        raise TypeError(f"input_ids must be a [B, T] tensor or a list of token lists, got {type(input_ids).__name__}")
    real = ids[mask.bool()]
    if real.numel() and (int(real.min()) < 0 or int(real.max()) >= vocab_size):
        bad = int(real.min()) if int(real.min()) < 0 else int(real.max())
        raise ValueError(f"input_ids contains token id {bad}, outside the model's vocabulary [0, {vocab_size})")
    ids = ids.masked_fill(mask == 0, pad_token_id if 0 <= pad_token_id < vocab_size else 0)
    return ids, mask
