"""The networks ReAtCo drives. Each backbone is one module (or folder) of its own: `wan/` is Wan 2.1 /
2.2 (a flow-matching video DiT in diffusers)."""
