"""Pure-PyTorch twins of every atspeed_ext op: the readable specification and the tests' oracle.

Each function here takes the same arguments and returns the same values as ``torch.ops.atspeed_ext.<op>``
(integer outputs exactly, float outputs to rounding).
"""

from .beam_sample import trie_beam_sample
from .beam_step import row_logsumexp, trie_beam_step
from .compact_kv import compact_kv, compaction_plan
from .sample_verify import exact_verify, relaxed_verify
from .strict_verify import strict_verify
from .tree_mask import NOT_TREE, ROOT, tree_attention_mask

__all__ = ["row_logsumexp", "trie_beam_step", "trie_beam_sample", "compact_kv", "compaction_plan", "strict_verify",
           "relaxed_verify", "exact_verify", "tree_attention_mask", "ROOT", "NOT_TREE"]
