"""Module-name patterns of diffusers' ``OmniGenTransformer2DModel`` (plain data).

Each pattern matches the *full* name from ``transformer.named_modules()`` of the
``nn.Linear`` layers it names (use ``re.fullmatch``; ``re.search`` gives the same set,
since no other module name contains these). Which of them get adapters is decided by
the adapter code, not here.

Diffusers splits the original fused ``qkv_proj`` into ``to_q``/``to_k``/``to_v``. A DEFT
adapter on the fused layer is not equivalent to three adapters on the split ones: use
``fused_groups=[["to_q", "to_k", "to_v"]]`` for the original's behaviour (docs/adapters.md).
"""

# Query, key and value projections of every block (3 per layer).
ATTN_QKV = r"layers\.\d+\.self_attn\.to_(q|k|v)"
# Attention output projection (the original ``o_proj``), 1 per layer.
ATTN_OUT = r"layers\.\d+\.self_attn\.to_out\.0"
# Fused gate/up projection (gate half first) and down projection, 2 per layer.
MLP = r"layers\.\d+\.mlp\.(gate_up_proj|down_proj)"

ALL_BLOCK_LINEARS = (ATTN_QKV, ATTN_OUT, MLP)
